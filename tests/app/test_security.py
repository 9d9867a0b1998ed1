"""Issue 33's attacks, run against the production server (uvicorn + the mounted app, `app_server.app_url`; the
app without keys: `demo_url`): reading server files through a file input, downloading the gallery, writing
without a key, poisoning a name, oversized or hostile requests, and a visitor's demo gallery seen by another."""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import time
from urllib.parse import urlparse

import pytest

pytest.importorskip("gradio")
import httpx  # noqa: E402
from gradio_client import Client, handle_file  # noqa: E402
from PIL import Image  # noqa: E402

from tests.app_server import STAFF_KEY, app_module, app_url, demo_url, serve  # noqa: E402

STAFF = {"Authorization": f"Bearer {STAFF_KEY}"}


@pytest.fixture(scope="module")
def app():
    return app_module()


@pytest.fixture(scope="module")
def http(app):
    with httpx.Client(base_url=app_url(), timeout=300) as client:
        yield client


@pytest.fixture(scope="module")
def staff_ui(app):
    return Client(app_url() + "/staff/", auth=("staff", STAFF_KEY), verbose=False)


def dog(dog_faces, name: str) -> list[str]:
    folder = dog_faces / name  # tests/photos/dog_faces: test-split dogs, never trained on
    return [str(folder / f) for f in sorted(os.listdir(folder))]


def files(paths, field):
    return [(field, (os.path.basename(p), open(p, "rb").read(), "image/jpeg")) for p in paths]


def gradio_call(base: str, api_name: str, data: list) -> str:
    """A raw call of a Gradio endpoint (what a script does without gradio_client) -> the event stream's text."""
    started = httpx.post(f"{base}/gradio_api/call/{api_name}", json={"data": data}, timeout=60)
    assert started.status_code == 200, started.text
    return httpx.get(f"{base}/gradio_api/call/{api_name}/{started.json()['event_id']}", timeout=300).text


def gr_upload_folder() -> str:
    import gradio as gr

    return gr.utils.get_upload_folder()


def file_data(path: str) -> dict:
    return {"path": path, "meta": {"_type": "gradio.FileData"}}


# -- 1. server files named as a file input ---------------------------------------------------------------------------
def test_a_server_file_named_as_a_file_input_is_refused(app, dog_faces, tmp_path):
    """Attack 1: `{"path": "/some/private/photo.jpg"}` as the input of /compare_sets or /identify: refused,
    nothing copied into Gradio's cache, no URL handed back, on the visitors' page and the demo page alike."""
    import gradio as gr

    from app import uploads

    private = tmp_path / "private" / "owner-photo.jpg"
    private.parent.mkdir()
    shutil.copyfile(dog(dog_faces, "327")[0], private)
    cache = gr.utils.get_upload_folder()
    before = {p for p, _, names in os.walk(cache) for n in names if n == private.name}
    for base in (app_url(), demo_url()):
        answer = gradio_call(base, "compare_sets", [[file_data(str(private))], [file_data(str(private))]])
        assert "event: error" in answer and "event: complete" not in answer and "/gradio_api/file=" not in answer
        assert "not uploaded" in answer
        answer = gradio_call(base, "identify", [file_data(str(private))] + ([None] if base == demo_url() else []))
        assert "event: error" in answer and "event: complete" not in answer
    after = {p for p, _, names in os.walk(cache) for n in names if n == private.name}
    assert after == before  # never copied into the cache
    # each handler checks too, whatever Gradio's state (a future Gradio, another way of mounting)
    with pytest.raises(gr.Error, match="'owner-photo.jpg' was not uploaded to this app"):
        uploads.checked(app.identify, 0)(str(private))


def test_gallery_and_data_folders_are_not_served(app, http):
    """Attack 2: the gallery index, its photos and the data folder are not downloadable, and no page names them."""
    gallery = app.gallery.directory
    photo = gallery / app.gallery.index.metadata[0]["photo"]
    data = os.path.realpath(app.SETTINGS.data)
    flickr = next((os.path.join(r, n) for r, _, ns in os.walk(data) for n in ns if n.endswith(".jpg")), None)
    text_photos = os.path.join(app.SETTINGS.assets_dir, "text_photos")  # the text index's shipped photos
    text_photo = os.path.join(text_photos, sorted(os.listdir(text_photos))[0])
    for path in filter(None, (gallery / "index" / "gallery.json", photo, gallery / "audit.log", flickr, text_photo)):
        assert http.get(f"/gradio_api/file={path}").status_code in (403, 404), path
        assert http.get(f"/staff/gradio_api/file={path}").status_code == 401, path  # the staff page needs its login
    readme = os.path.join(
        os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "README.md"
    )  # the cwd's files
    from app.shown_images import thumbnail

    shown = thumbnail(str(photo))  # the app's own copy to show: served only after Gradio copies it to its cache
    for path in ("/etc/passwd", readme, os.path.join(gr_upload_folder(), "..", "..", "etc", "passwd"), shown):
        assert http.get(f"/gradio_api/file={path}").status_code in (403, 404), path
    for page in ("/config", "/", "/api/v1/animals", "/api/v1/health"):
        text = http.get(page).text
        assert str(gallery) not in text and data not in text, page
    assert str(gallery) not in app.registered_animals()


# -- 2. roles ------------------------------------------------------------------------------------------------------
def test_writes_need_a_staff_key(app, http, dog_faces):
    """Attack 3: REST writes without a key are 401, with a wrong key 403; the visitors' page has no /register; the
    staff page refuses a wrong key."""
    photo = files(dog(dog_faces, "508")[:1], "photos")
    none = http.post("/api/v1/register", data={"name": "Bella"}, files=photo)
    assert none.status_code == 401 and none.headers["www-authenticate"] == "Bearer" and "Bearer" in none.json()["detail"]
    wrong = http.post("/api/v1/register", data={"name": "Bella"}, files=photo, headers={"Authorization": "Bearer guess"})
    assert wrong.status_code == 403 and "not valid" in wrong.json()["detail"]
    some = app.gallery.animals()[0]
    assert http.patch(f"/api/v1/animals/{some.id}", json={"name": "Mine now"}).status_code == 401
    assert http.delete(f"/api/v1/animals/{some.id}").status_code == 401
    assert http.post(f"/api/v1/animals/{some.id}/photos", files=photo).status_code == 401
    assert http.get("/api/v1/audit").status_code == 401
    staff_call = http.post("/staff/gradio_api/call/register", json={"data": ["Bella", []]})
    assert staff_call.status_code == 401  # the staff page's API needs its login
    assert app.gallery.animal(some.id).name == some.name
    visitor = Client(app_url(), verbose=False)
    with pytest.raises(ValueError, match="register"):
        visitor.predict("Bella", [handle_file(dog(dog_faces, "508")[0])], api_name="/register")
    with pytest.raises(Exception):  # noqa: B017  (gradio_client raises its own error types for a refused login)
        Client(app_url() + "/staff/", auth=("staff", "not-a-staff-key-at-all"), verbose=False)


def test_staff_keys_from_a_file_of_keys_and_hashes(tmp_path):
    import hashlib

    from app.security import StaffKeys

    key_a, key_b = "alpha-key-0123456789abcdef", "bravo-key-0123456789abcdef"
    keys_file = tmp_path / "keys"
    keys_file.write_text(f"# staff keys\n{key_a}\nsha256:{hashlib.sha256(key_b.encode()).hexdigest()}\n\n")
    keys = StaffKeys.load("charlie-key-0123456789abcdef", keys_file)
    assert len(keys) == 3 and keys.enabled
    assert keys.who(key_a) == f"key:{hashlib.sha256(key_a.encode()).hexdigest()[:8]}"
    assert keys.who(key_b) and keys.who("charlie-key-0123456789abcdef") and keys.who("bravo") is None
    assert not StaffKeys.load("", None).enabled
    with pytest.raises(ValueError, match="at least 16"):
        StaffKeys(["short"])


# -- 3. records, 409, audit ------------------------------------------------------------------------------------------
def test_animal_records_over_rest(app, http, dog_faces):
    """Register -> 409 on the same name (NFKC, any case) -> add photos -> rename (409 when taken) -> delete; the
    public record has no note; every change is in the audit log with the key's fingerprint, never the key."""
    biscuit = dog(dog_faces, "421")
    out = http.post(
        "/api/v1/register",
        data={"name": "Biscuit", "species": "dog", "note": "finder: +41 79 000 00 00"},
        files=files(biscuit[:2], "photos"),
        headers=STAFF,
    )
    assert out.status_code == 200, out.text
    animal = out.json()["id"]
    for name in ("Biscuit", "ＢＩＳＣＵＩＴ"):  # full-width letters fold to the same name (NFKC), case ignored
        again = http.post("/api/v1/register", data={"name": name}, files=files(biscuit[2:3], "photos"), headers=STAFF)
        assert again.status_code == 409 and animal in again.json()["detail"]
    added = http.post(f"/api/v1/animals/{animal}/photos", files=files(biscuit[2:3], "photos"), headers=STAFF)
    assert added.status_code == 200 and added.json() == {"id": animal, "name": "Biscuit", "added": 1, "photos": 3}
    public = http.get(f"/api/v1/animals/{animal}").json()
    assert public["note"] is None and public["registered_by"] is None and len(public["photo_urls"]) == 3
    assert "+41" not in http.get("/api/v1/animals").text
    staff_view = http.get(f"/api/v1/animals/{animal}", headers=STAFF).json()
    assert staff_view["note"] == "finder: +41 79 000 00 00" and staff_view["registered_by"].startswith("api key:")
    taken = app.gallery.animals()[0].name
    assert http.patch(f"/api/v1/animals/{animal}", json={"name": taken}, headers=STAFF).status_code == 409
    renamed = http.patch(f"/api/v1/animals/{animal}", json={"name": "Biscuit Jr", "species": "dog"}, headers=STAFF)
    assert renamed.status_code == 200 and renamed.json()["name"] == "Biscuit Jr"
    assert "Biscuit Jr" in app.gallery.names and "Biscuit" not in app.gallery.names
    photo_url = public["photo_urls"][0]
    assert http.get(photo_url).status_code == 200
    deleted = http.delete(f"/api/v1/animals/{animal}", headers=STAFF)
    assert deleted.status_code == 200 and deleted.json() == {"id": animal, "removed_photos": 3}
    assert http.get(f"/api/v1/animals/{animal}").status_code == 404 and http.get(photo_url).status_code == 404
    assert http.delete(f"/api/v1/animals/{animal}", headers=STAFF).status_code == 404
    log = [e for e in http.get("/api/v1/audit", params={"limit": 1000}, headers=STAFF).json() if e["animal"] == animal]
    assert [e["action"] for e in log] == ["register", "add_photos", "update", "delete"]
    assert all(e["who"].startswith("api key:") and e["at"] for e in log) and log[2]["old_name"] == "Biscuit"
    audit_text = (app.gallery.directory / "audit.log").read_text()
    assert STAFF_KEY not in audit_text and "+41" not in audit_text


def test_names_are_normalised_and_invisible_characters_refused(http, dog_faces):
    photo = files(dog(dog_faces, "510")[:1], "photos")
    for name in ("Bel\u200bla", "Rex\u202egnal", "Max\x00", "Luna\x1b[31m"):
        out = http.post("/api/v1/register", data={"name": name}, files=photo, headers=STAFF)
        assert out.status_code == 400 and "control or invisible characters" in out.json()["detail"], name
    out = http.post("/api/v1/register", data={"name": "ﬁdo  Ｎｏ１"}, files=photo, headers=STAFF)
    assert out.status_code == 200 and out.json()["name"] == "fido No1"  # NFKC: ligature and full-width folded


def test_staff_page_registers_edits_and_deletes(app, staff_ui, dog_faces):
    """The staff page's flows, as a script calls them: a registered name is asked about, not merged silently."""
    pippa = [handle_file(p) for p in dog(dog_faces, "427")]
    status, listing = staff_ui.predict("Pippa", pippa[:2], api_name="/register")
    assert "Registered 2 photo(s) of Pippa" in status and "Pippa (2)" in listing
    with pytest.raises(Exception, match="Pippa is already registered.*Tick 'Add these photos"):
        staff_ui.predict("pippa", pippa[2:3], api_name="/register")
    status, _ = staff_ui.predict("Pippa", pippa[2:3], "dog", "", True, api_name="/register")
    assert "Pippa now has 3 photo(s)" in status
    animal = app.gallery.find_name("Pippa")
    status, listing, _ = staff_ui.predict(animal.id, "Pippa Chanel", "", "", api_name="/update_animal")
    assert "Saved: Pippa Chanel" in status and "Pippa Chanel (3)" in listing
    with pytest.raises(Exception, match="Tick 'Yes, delete it'"):
        staff_ui.predict(animal.id, False, api_name="/delete_animal")
    status, listing, _ = staff_ui.predict(animal.id, True, api_name="/delete_animal")
    assert "Deleted Pippa Chanel" in status and "Pippa Chanel" not in listing
    rows = staff_ui.predict(200, api_name="/audit_log")["data"]
    mine = [row for row in rows if row[3] == animal.id]
    assert [row[2] for row in mine] == ["delete", "update", "add_photos", "register"]  # newest first
    assert all(row[1] == f"ui staff ({app.STAFF.who(STAFF_KEY)})" for row in mine)


# -- 4. the public demo (no keys) ------------------------------------------------------------------------------------
def test_demo_mode_keeps_each_visitors_gallery_private(app, dog_faces):
    """Without keys: REST writes are 403 saying how to enable keys; a visitor registers into a gallery only their
    session sees; another visitor, the REST API and the shared gallery never see it; there is no staff page."""
    base = demo_url()
    secret = dog(dog_faces, "534")
    refused = httpx.post(f"{base}/api/v1/register", data={"name": "Secret"}, files=files(secret[:1], "photos"))
    assert refused.status_code == 403 and "PETMATCH_API_KEYS" in refused.json()["detail"]
    refused = httpx.post(f"{base}/api/v1/register", data={"name": "Secret"}, files=files(secret[:1], "photos"), headers=STAFF)
    assert refused.status_code == 403  # no key is valid when none is configured
    assert httpx.get(f"{base}/staff/").status_code == 404
    shared_before = app.gallery.names
    alice, bob = Client(base, verbose=False), Client(base, verbose=False)
    status, listing = alice.predict("Secret Dog", [handle_file(p) for p in secret[:3]], api_name="/register")
    assert "private demo gallery" in status and "Secret Dog (3)" in listing
    answer, _, _ = alice.predict(handle_file(secret[3]), api_name="/identify")
    assert answer.startswith("Identified: Secret Dog")
    answer, _, details = bob.predict(handle_file(secret[3]), api_name="/identify")
    assert "Secret Dog" not in answer and "Secret Dog" not in json.dumps(details)
    assert "Secret Dog" not in httpx.get(f"{base}/api/v1/animals").text
    assert app.gallery.names == shared_before and "Secret Dog" not in app.gallery.names


# -- 5. limits -------------------------------------------------------------------------------------------------------
def raw_request(base: str, head: str, body: bytes = b"") -> str:
    """Send a request by hand (headers claiming what they like) -> the status line, read within 10 s."""
    url = urlparse(base)
    with socket.create_connection((url.hostname, url.port), timeout=10) as s:
        s.sendall(head.encode() + body)
        return s.recv(4096).decode(errors="replace").split("\r\n")[0]


def test_bodies_and_file_counts_are_refused_while_reading(http, dog_faces):
    """Attack 4: a body claiming 300 MB is refused at once (413, nothing read), on the REST API and on Gradio's
    upload route; 41 files in one form are refused by the parser (413), not spooled and then counted."""
    for path in ("/api/v1/match", "/gradio_api/upload"):
        head = (
            f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
            f"Content-Length: {300 * 2**20}\r\n\r\n"
        )
        start = time.perf_counter()
        assert raw_request(app_url(), head, b"--b\r\n").startswith("HTTP/1.1 413 "), path
        assert time.perf_counter() - start < 5
    head = f"POST /api/v1/identify HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\nContent-Length: {30 * 2**20}\r\n\r\n"
    assert raw_request(app_url(), head, b"--b\r\n").startswith("HTTP/1.1 413 ")  # one photo: 21 MB at most
    big = http.post("/api/v1/identify", files=[("photo", ("big.jpg", b"\xff\xd8\xff" + bytes(25 * 2**20), "image/jpeg"))])
    assert big.status_code == 413 and "larger than this endpoint accepts (21 MB)" in big.json()["detail"]

    def chunked():  # no Content-Length: counted while read, refused after 21 MB, not after the whole body
        yield b'--b\r\nContent-Disposition: form-data; name="photo"; filename="big.jpg"\r\n\r\n\xff\xd8\xff'
        for _ in range(60):
            yield bytes(2**20)

    streamed = http.post("/api/v1/identify", content=chunked(), headers={"Content-Type": "multipart/form-data; boundary=b"})
    assert streamed.status_code == 413 and "(21 MB)" in streamed.json()["detail"]
    many = [("set_a", (f"{i}.jpg", b"\xff\xd8\xff", "image/jpeg")) for i in range(41)]
    out = http.post("/api/v1/match", files=many)
    assert out.status_code == 413 and "Too many files" in out.json()["detail"]


def test_only_jpeg_png_webp_and_no_progressive_bombs(http, dog_faces, monkeypatch):
    from model_pkg.data import images

    one = [("photo", ("a.jpg", b"GIF89a" + b"\x00" * 64, "image/jpeg"))]
    out = http.post("/api/v1/identify", files=one)
    assert (
        out.status_code == 400
        and "only JPEG, PNG, WEBP photos are accepted" in out.json()["detail"]
        and "'a.jpg'" in out.json()["detail"]
    )
    eps = [("photo", ("scan.jpg", b"%!PS-Adobe-3.0 EPSF-3.0\n", "image/jpeg"))]
    assert http.post("/api/v1/identify", files=eps).status_code == 400
    progressive, baseline = io.BytesIO(), io.BytesIO()
    picture = Image.open(dog(dog_faces, "327")[0]).convert("RGB").resize((400, 400))
    picture.save(progressive, "JPEG", progressive=True)
    picture.save(baseline, "JPEG")
    monkeypatch.setattr(images, "MAX_PROGRESSIVE_PIXELS", 100_000)  # stands for 50 MP, on a small photo
    out = http.post("/api/v1/identify", files=[("photo", ("p.jpg", progressive.getvalue(), "image/jpeg"))])
    assert out.status_code == 400 and "progressive JPEG" in out.json()["detail"]
    out = http.post("/api/v1/identify", files=[("photo", ("b.jpg", baseline.getvalue(), "image/jpeg"))])
    assert out.status_code == 200, out.text


def test_rate_limit_answers_429_with_retry_after(app, monkeypatch):
    """Per-client limit on requests that start work; staff keys are not limited; page loads are not counted."""
    monkeypatch.setattr(app.SETTINGS, "rate_limit", 3)  # 3 a minute, bursts of 6
    limited, _, _ = app.create_app(app.STAFF)
    base = serve(limited)
    query = {"text": "a dog", "top_k": 1}
    codes = [httpx.post(f"{base}/api/v1/search", json=query, timeout=120).status_code for _ in range(6)]
    assert codes == [200] * 6
    refused = httpx.post(f"{base}/api/v1/search", json=query)
    assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1 and "Retry in" in refused.json()["detail"]
    assert httpx.post(f"{base}/gradio_api/call/search_text", json={"data": ["a dog", 1]}).status_code == 429
    guess = httpx.post(f"{base}/staff/login", data={"username": "x", "password": "guess-0123456789abcdef"})
    assert guess.status_code == 429  # guessing staff keys on the login form is limited too
    assert httpx.post(f"{base}/api/v1/search", json=query, headers=STAFF, timeout=120).status_code == 200
    assert httpx.get(f"{base}/api/v1/health").status_code == 200 and httpx.get(f"{base}/").status_code == 200


def test_rest_and_ui_share_one_bounded_queue(app, http, staff_ui, dog_faces, monkeypatch):
    """Model work from REST and the UI goes through the same queue: when it is full both are told to retry."""
    from app.security import ModelWork

    monkeypatch.setattr(app.services, "work", ModelWork(1, 0))  # no one may wait
    photo = dog(dog_faces, "327")[0]
    out = http.post("/api/v1/identify", files=files([photo], "photo"))
    assert out.status_code == 503 and out.headers["retry-after"] == "5" and "busy" in out.json()["detail"]
    with pytest.raises(Exception, match="busy"):
        Client(app_url(), verbose=False).predict(handle_file(photo), api_name="/identify")


def test_unexpected_errors_do_not_reach_the_client_with_server_paths(app, dog_faces, monkeypatch):
    """An exception the handlers do not expect (a disk error naming a gallery file) is logged, not shown: the
    client gets a generic error, on the page and through the REST API."""
    secret = f"[Errno 13] Permission denied: '{app.gallery.directory}/index/gallery.json'"

    class Broken:
        def run(self, fn, *args, **kwargs):
            raise PermissionError(secret)

    monkeypatch.setattr(app.services, "work", Broken())
    photo = dog(dog_faces, "327")[0]
    with pytest.raises(Exception) as caught:
        Client(app_url(), verbose=False).predict(handle_file(photo), api_name="/identify")
    assert "PermissionError" in str(caught.value) and str(app.gallery.directory) not in str(caught.value)
    out = httpx.post(f"{app_url()}/api/v1/identify", files=files([photo], "photo"), timeout=120)
    assert out.status_code == 500 and str(app.gallery.directory) not in out.text


def test_redact_paths_token_buckets_and_what_counts_as_work():
    from app.security import TokenBuckets, is_work_request, redact_paths

    assert redact_paths("cannot load image '/tmp/gradio/3f2a/scan.jpg': bad") == "cannot load image 'scan.jpg': bad"
    assert redact_paths("no model at /srv/petmatch/models/pair: give one") == "no model at pair: give one"
    assert redact_paths("see http://host/a/b and 1/2 of 3/4") == "see http://host/a/b and 1/2 of 3/4"
    assert redact_paths("'/tmp/x/00-ab.img' failed", {"/tmp/x/00-ab.img": "dog.jpg"}) == "'dog.jpg' failed"
    buckets = TokenBuckets(per_minute=60, burst=2)  # one a second, two at once
    assert [buckets.take("a", now=0.0) for _ in range(2)] == [0, 0]
    assert buckets.take("a", now=0.0) == pytest.approx(1.0) and buckets.take("b", now=0.0) == 0  # per client
    assert buckets.take("a", now=1.5) == 0  # refilled
    assert is_work_request("POST", "/api/v1/match") and is_work_request("POST", "/staff/login")
    assert is_work_request("POST", "/gradio_api/queue/join") and is_work_request("DELETE", "/api/v1/animals/a1")
    assert not is_work_request("GET", "/api/v1/animals") and not is_work_request("POST", "/gradio_api/upload")
