"""`python -m model_pkg.gallery build --embeddings DIR --out DIR`: a faiss index from sharded embeddings."""

from ..vector_index import main

if __name__ == "__main__":
    main()
