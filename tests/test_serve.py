"""`aiayn serve`: the HTTP API (answers, validation, limits, safety) and the web page in a real headless browser."""

import json
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest
from starlette.testclient import TestClient

import aiayn
from aiayn.serve import Settings, create_app

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"


@pytest.fixture(scope="module")
def models(model_folders):
    return aiayn.load(model_folders / "s2s", device="cpu"), aiayn.load(model_folders / "lm", device="cpu")


def client(model, **settings):
    return TestClient(
        create_app(model, Settings(**settings)), base_url="http://127.0.0.1", raise_server_exceptions=False
    )


def test_translate_generate_attention_and_health(models):
    s2s, lm = models
    api = client(s2s)
    assert api.get("/health").json() == {"status": "ok", "arch": "seq2seq"}
    r = api.post("/v1/translate", json={"text": ["two dogs", "", "a man rides"], "beam": 2})
    assert r.status_code == 200 and r.json() == {"translations": s2s.translate(["two dogs", "", "a man rides"], beam=2)}
    assert api.post("/v1/translate", json={"text": "two dogs"}).json()["translations"] == s2s.translate(["two dogs"])
    attn = api.post("/v1/attention", json={"text": "two dogs"}).json()
    expected = s2s.attention("two dogs")
    assert attn["source"] == expected.source and attn["output"] == expected.output and attn["heads"] == 4
    cross = expected.weights["decoder.layers.1.cross_attn"]
    assert attn["weights"]["decoder.layers.1.cross_attn"] == [
        [[round(float(x), 4) for x in r] for r in h] for h in cross
    ]
    r = api.post("/v1/generate", json={"prompt": "two"})
    assert r.status_code == 400 and r.json() == {"error": "this model translates: use /v1/translate"}
    gen = client(lm).post("/v1/generate", json={"prompt": "zwei", "max_new_tokens": 12, "seed": 3, "top_k": 5})
    assert gen.json() == {"text": lm.generate("zwei", max_new_tokens=12, seed=3, top_k=5)}
    assert "text/html" in api.get("/").headers["content-type"] and "/v1/attention" in api.get("/").text


@pytest.mark.parametrize(
    "path, body, field, words",
    [
        ("/v1/translate", {"text": "a", "beam": 0}, "beam", "greater than or equal to 1"),
        ("/v1/translate", {"text": "a", "beam": 17}, "beam", "less than or equal to 16"),
        ("/v1/translate", {"text": "a" * 2001}, "text", "at most 2000 characters"),
        ("/v1/translate", {"text": ["a"] * 65}, "text", "at most 64 items"),
        ("/v1/translate", {"text": "a", "max_len": 513}, "max_len", "less than or equal to 512"),
        ("/v1/translate", {"txt": "a"}, "text", "Field required"),
        ("/v1/translate", {"text": "a", "bem": 2}, "bem", "Extra inputs are not permitted"),
        ("/v1/generate", {"prompt": "a", "max_new_tokens": 10_000}, "max_new_tokens", "less than or equal to 512"),
        ("/v1/generate", {"prompt": "a", "temperature": -1}, "temperature", "greater than or equal to 0"),
        ("/v1/generate", {"prompt": "a", "top_p": 1.5}, "top_p", "less than or equal to 1"),
        ("/v1/generate", {"prompt": "a", "top_p": 0}, "top_p", "greater than 0"),
        ("/v1/generate", {"prompt": "a", "top_k": -1}, "top_k", "greater than or equal to 0"),
        ("/v1/generate", {"prompt": ""}, "prompt", "at least 1 character"),
    ],
)
def test_every_option_is_validated_with_a_422_naming_the_field_and_bound(models, path, body, field, words):
    model = models[1] if path == "/v1/generate" else models[0]
    r = client(model).post(path, json=body)
    assert r.status_code == 422
    fields = r.json()["fields"]
    assert any(f["field"].split(".")[0] == field and words in f["message"] for f in fields), fields


def test_body_limit_host_allow_list_cors_and_no_internals_in_errors(models, monkeypatch):
    s2s, _ = models
    api = client(s2s)
    big = json.dumps({"text": "a" * (1 << 20)})
    r = api.post("/v1/translate", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json() == {"error": "request body over 1,048,576 bytes"}

    def chunks():  # no Content-Length: the limit counts what arrives
        for _ in range(20):
            yield b" " * 65536

    r = api.post("/v1/translate", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413
    r = api.post("/v1/translate", content=b"{}", headers={"content-type": "application/json", "content-length": "x"})
    assert r.status_code == 400 and r.json() == {"error": "Content-Length is not a number"}
    evil = TestClient(create_app(s2s), base_url="http://attacker.example")
    assert evil.get("/health").status_code == 400
    r = api.get("/health", headers={"Origin": "http://elsewhere.example"})
    assert "access-control-allow-origin" not in r.headers
    allowed = client(s2s, cors_origins=["http://elsewhere.example"])
    r = allowed.get("/health", headers={"Origin": "http://elsewhere.example"})
    assert r.headers["access-control-allow-origin"] == "http://elsewhere.example"

    def broken(*args, **kwargs):
        raise RuntimeError("/srv/secret/path failed")

    monkeypatch.setattr(s2s, "translate", broken)
    r = api.post("/v1/translate", json={"text": "a"})
    assert r.status_code == 500 and r.json() == {"error": "internal error"} and "secret" not in r.text
    r = api.post("/v1/translate", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "malformed JSON" in r.json()["error"] and "Traceback" not in r.text


def test_requests_over_the_in_flight_limit_and_queue_get_503_at_once(models, monkeypatch):
    s2s, _ = models
    release, entered = threading.Event(), threading.Event()

    def slow(texts, **kwargs):
        entered.set()
        release.wait(10)
        return ["done"] * len(texts)

    monkeypatch.setattr(s2s, "translate", slow)
    api = client(s2s, max_in_flight=1, queue=0)  # no queue: the next request is refused at once
    first = {}
    thread = threading.Thread(target=lambda: first.update(r=api.post("/v1/translate", json={"text": "a"})))
    thread.start()
    assert entered.wait(10)
    start = time.perf_counter()
    r = api.post("/v1/translate", json={"text": "b"})
    waited = time.perf_counter() - start
    release.set()
    thread.join(10)
    assert r.status_code == 503 and r.headers["retry-after"] == "1" and "busy" in r.json()["error"]
    assert waited < 5  # answered while the first request still held the only slot
    assert first["r"].json() == {"translations": ["done"]}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(
    not (shutil.which("chromium") and shutil.which("chromedriver")),
    reason="needs Debian's chromium and chromium-driver (.ci/run installs them)",
)
def test_web_page_in_headless_chromium(models, tmp_path):
    import uvicorn
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    s2s, _ = models
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(s2s), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1000,900"):  # fmt: skip
        options.add_argument(flag)
    driver = None
    try:
        deadline = time.time() + 30
        while not server.started and time.time() < deadline:
            time.sleep(0.05)
        driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
        wait = WebDriverWait(driver, 30)
        driver.get(f"http://127.0.0.1:{port}/")
        wait.until(lambda d: d.find_element(By.ID, "go").text == "Translate")
        driver.find_element(By.ID, "text").send_keys("two dogs play")
        driver.find_element(By.ID, "go").click()
        wait.until(lambda d: d.find_element(By.ID, "view").is_displayed())
        assert driver.find_element(By.ID, "result").get_attribute("textContent") == s2s.translate(["two dogs play"])[0]
        expected = s2s.attention("two dogs play")
        outputs = driver.find_elements(By.CSS_SELECTOR, "#output span")
        assert [o.get_attribute("textContent") for o in outputs] == expected.output

        def lit():
            return [float(s.get_attribute("data-weight")) for s in driver.find_elements(By.CSS_SELECTOR, "#input span")]

        cross = expected.weights["decoder.layers.1.cross_attn"].mean(axis=0)  # last layer, mean of the heads
        outputs[0].click()
        first = lit()
        assert first == pytest.approx(cross[0].tolist(), abs=2e-4)
        outputs[-1].click()
        last = lit()
        assert last == pytest.approx(cross[-1].tolist(), abs=2e-4) and last != first  # the highlight moved
        ARTIFACTS.mkdir(exist_ok=True)
        driver.save_screenshot(str(ARTIFACTS / "serve-page.png"))
    finally:
        if driver is not None:
            driver.quit()
        server.should_exit = True
        thread.join(10)


def test_serve_command_rejects_bad_arguments_before_starting(model_folders, capsys):
    from aiayn.cli import main

    assert main(["serve", "--model", str(model_folders / "s2s"), "--port", "0"]) == 2
    assert capsys.readouterr().err.strip() == "error: --port 0: expected 1..65535"
    assert main(["serve", "--model", str(model_folders / "s2s"), "--max-in-flight", "0"]) == 2
    assert capsys.readouterr().err.strip() == "error: --max-in-flight 0: expected a number >= 1"
    assert main(["serve", "--model", str(model_folders / "missing")]) == 2
    assert "no such model folder" in capsys.readouterr().err
