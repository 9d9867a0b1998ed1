"""The REST API's request and response models: the OpenAPI schema at /docs (`app/api.py`, `app/api_gallery.py`)."""

from __future__ import annotations

from pydantic import BaseModel, Field

from model_pkg.gallery_store.records import SPECIES

MAX_TOP_K = 50
MAX_QUERY_LENGTH = 1000  # characters of a description


class PhotoPair(BaseModel):
    index_a: int = Field(description="position of the photo in set_a (0-based)")
    index_b: int = Field(description="position of the photo in set_b (0-based)")
    filename_a: str
    filename_b: str
    similarity: float = Field(description="cosine similarity of the two photos' embeddings")


class IntakeView(BaseModel):
    """What the photo intake saw in one photo."""

    species: str | None = Field(description="'dog', 'cat', or null when no dog or cat was found")
    kind: str | None = Field(description="'dog_face', 'dog_body', 'cat_face' or 'cat_body'")
    box: list[int] = Field(description="the animal's box (left, top, right, bottom) in the photo as loaded (at most 1,024 px)")
    cropped: bool = Field(description="whether the models saw the box as well as the whole photo")
    reshoot: str | None = Field(description="why this photo should be retaken; null when it is usable")
    note: str | None = None


def intake_view(seen) -> IntakeView:
    return IntakeView(
        species=seen.species, kind=seen.kind, box=list(seen.box), cropped=seen.cropped, reshoot=seen.reshoot, note=seen.note
    )


class MatchResponse(BaseModel):
    same_animal: bool = Field(description="probability >= threshold")
    probability: float = Field(description="probability that the two sets show the same animal")
    threshold: float = Field(description="decision threshold stored in the model for these set sizes")
    set_sizes: list[int]
    most_alike: PhotoPair
    top_pairs: list[PhotoPair]
    kind: str | None = Field(default=None, description="the kind of photo whose calibration decided")
    notes: list[str] = Field(default_factory=list, description="photos left out, a species mismatch, an unsure species")
    intake_a: list[IntakeView] = Field(default_factory=list, description="what the intake saw in each photo of set_a")
    intake_b: list[IntakeView] = Field(default_factory=list)


class Candidate(BaseModel):
    name: str
    vote_share: float


class Match(BaseModel):
    animal_id: str
    name: str
    similarity: float = Field(description="cosine similarity of the animal's best photo")
    photo_url: str = Field(description="where to GET that photo")


class IdentifyResponse(BaseModel):
    decision: str = Field(
        description="'identified', 'unknown' (nothing similar enough) or 'reshoot' (two animals about equally likely, "
        "or the intake found the photo unusable: `intake.reshoot` says why)"
    )
    name: str | None = Field(description="the identified animal, null when rejected")
    message: str = Field(description="one sentence for a person")
    confidence: float = Field(description="the winning animal's share of the vote")
    top_score: float = Field(description="similarity of the best gallery photo")
    candidates: list[Candidate]
    matches: list[Match] = Field(description="the best-matching animals, best first, with their best photo")
    score_threshold: float | None
    margin_threshold: float
    intake: IntakeView | None = Field(default=None, description="what the intake saw in the photo")


class RegisterResponse(BaseModel):
    id: str = Field(description="the animal's stable id")
    name: str
    added: int = Field(description="photos added by this call")
    photos: int = Field(description="photos of this animal in the gallery now")


class Animal(BaseModel):
    id: str
    name: str
    species: str
    registered_at: str
    photos: int


class AnimalDetail(Animal):
    photo_urls: list[str]
    registered_by: str | None = Field(None, description="staff only: who registered it")
    note: str | None = Field(None, description="staff only: e.g. how to reach the finder or owner")


class AnimalUpdate(BaseModel):
    name: str | None = Field(None, description="a new display name (409 when another animal has it)")
    species: str | None = Field(None, description=f"one of {', '.join(SPECIES)}")
    note: str | None = Field(None, max_length=500, description="staff-only note")


class DeleteResponse(BaseModel):
    id: str
    removed_photos: int


class AnimalsResponse(BaseModel):
    count: int
    animals: list[Animal]


class SearchRequest(BaseModel):
    text: str = Field(
        max_length=MAX_QUERY_LENGTH, description="a description of the photo, e.g. 'a black dog running on the beach'"
    )
    top_k: int = Field(8, ge=1, le=MAX_TOP_K, description=f"how many photos (1-{MAX_TOP_K})")


class SearchHitOut(BaseModel):
    photo_id: int = Field(description="the photo's id in the index")
    filename: str
    score: float = Field(
        description="how well the photo matches the text, higher is better: the cosine of their embeddings, plus "
        "the photo's query-bank offset when the model has a bank (a penalty for photos that match every text a little)"
    )
    url: str = Field(description="where to GET the photo")


class SearchResponse(BaseModel):
    text: str
    results: list[SearchHitOut]


class HealthResponse(BaseModel):
    status: str = Field(
        description="'ok' when every model is loaded, 'loading' while one still loads after start, else 'degraded' "
        "(a missing model disables its endpoints, which say why)"
    )
