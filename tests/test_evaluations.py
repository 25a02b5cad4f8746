"""The evaluation harness: batch runs, resume, tables, log judging, representation analysis."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from blsp_demo.audio import AudioError
from blsp_demo.options import Response
from evaluations import run as R
from evaluations import representation as REP
from evaluations.judge_logs import agreement_report, judge_turns, turns_to_judge


def write_wav(path: Path, seconds: float = 0.6, seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    t = np.arange(int(16000 * seconds)) / 16000
    sf.write(path, (0.3 * np.sin(2 * np.pi * (200 + 40 * seed) * t) + 0.01 * rng.standard_normal(t.size)).astype(np.float32), 16000)
    return path.name


ASR_TEXTS = ["the cat sat on the mat", "a red ball", "green trees grow tall", "we like warm bread",
             "rain falls on the roof", "open the blue door", "birds sing at dawn"]


def asr_manifest(tmp_path: Path, missing: bool = True) -> Path:
    rows = []
    for i, text in enumerate(ASR_TEXTS):
        audio = write_wav(tmp_path / f"a{i}.wav", seed=i) if not (missing and i == 3) else "gone.wav"
        rows.append({"id": f"u{i}", "audio": audio, "reference": text, "transcript": text, "task": "asr"})
    path = tmp_path / "asr.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


class FakeEngine:
    """respond_batch like ChatEngine's: a missing file fails its row only. The text system repeats
    the transcript; cascade drops the last word; blsp answers one word. `stop_after` batches, it
    raises KeyboardInterrupt (a run killed midway)."""

    def __init__(self, system: str, calls: list, stop_after: int | None = None):
        self.name, self.model_id, self.revision = system, f"fake-{system}", "r1"
        self.calls, self.stop_after = calls, stop_after

    def respond_batch(self, convs, options, batch_size=8, on_error=None):
        if self.stop_after is not None and len(self.calls) >= self.stop_after:
            raise KeyboardInterrupt
        self.calls.append(len(convs))
        out = []
        for i, conv in enumerate(convs):
            turn = conv.last_user
            if not Path(turn.audio).is_file():
                on_error(i, AudioError("not_found", f"The audio file {Path(turn.audio).name!r} does not exist."))
                out.append(None)
                continue
            words = turn.transcript.split()
            text = {"text": " ".join(words), "cascade": " ".join(words[:-1]), "blsp": "hello"}[self.name]
            if "intent" in turn.text:
                text = {"text": "The intent is get weather.", "cascade": "play music", "blsp": "I am not sure"}[self.name]
            out.append(Response(text=text, ttft_s=0.1, total_s=0.2, new_tokens=3, options=options))
        return out


def args(manifest: Path, out: Path, task: str = "asr", **kw):
    ns = R.parser().parse_args(["--manifest", str(manifest), "--task", task, "--model", "micro-blsp",
                                "--out", str(out), "--batch-size", "2", "--judge", "none"])
    for k, v in kw.items():
        setattr(ns, k, v)
    return ns


def factory(calls, stop_after=None, fail=()):
    def make(spec, system):
        assert spec == f"micro-{system}"  # the micro siblings
        if system in fail:
            raise RuntimeError(f"{spec}: the trained adapter is not there yet")
        return FakeEngine(system, calls, stop_after)
    return make


def read_csv(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def test_run_writes_predictions_and_paper_style_tables(tmp_path):
    manifest = asr_manifest(tmp_path)
    out = tmp_path / "out"
    calls = []
    scores = R.evaluate(args(manifest, out), factory(calls))
    preds = R.read_jsonl(out / "predictions.jsonl")
    assert len(preds) == 3 * len(ASR_TEXTS)
    failed = [p for p in preds if p["error"]]
    assert {p["id"] for p in failed} == {"u3"} and failed[0]["error_code"] == "not_found"
    assert calls and max(calls) == 2  # batched
    wer = {s.system: s for s in scores}
    # text: only the failed row is wrong: 4 deletions out of 30 reference words
    n_words = sum(len(t.split()) for t in ASR_TEXTS)
    assert wer["text"].score == pytest.approx(100 * 4 / n_words)
    # cascade drops one word per answered row (6) plus the failed row's 4 words
    assert wer["cascade"].score == pytest.approx(100 * (6 + 4) / n_words)
    assert wer["text"].n == 7 and wer["text"].n_errors == 1 and wer["text"].ci_low <= wer["text"].score <= wer["text"].ci_high
    md = (out / "results.md").read_text()
    table = [line for line in md.splitlines() if line.startswith("| ")]
    assert [line.split("|")[1].strip() for line in table] == ["System", "Text+LLM", "Whisper+LLM", "BLSP"]
    assert "asr WER (%)" in table[0] and "EnglishTextNormalizer" in md and "python -m evaluations.run" in md
    rows = read_csv(out / "results.csv")
    assert [r["system_name"] for r in rows] == ["Text+LLM", "Whisper+LLM", "BLSP"] and rows[0]["metric"] == "wer"


def test_resume_after_an_interrupted_run_gives_the_same_results(tmp_path, monkeypatch):
    manifest = asr_manifest(tmp_path)
    monkeypatch.chdir(tmp_path)
    whole = Path("whole")
    R.evaluate(args(manifest, whole), factory([]))
    resumed = Path("resumed")
    calls = []
    with pytest.raises(KeyboardInterrupt):
        R.evaluate(args(manifest, resumed), factory(calls, stop_after=2))
    done = len(R.read_jsonl(resumed / "predictions.jsonl"))
    assert 0 < done < 3 * len(ASR_TEXTS)
    with open(resumed / "predictions.jsonl", "ab") as f:
        f.write(b'{"system": "text", "id": "u')  # a torn last line from the kill
    calls2 = []
    R.evaluate(args(manifest, resumed), factory(calls2))
    assert sum(calls2) == 3 * len(ASR_TEXTS) - done  # done rows were not generated again
    for name in ("results.csv", "results.md"):
        assert (resumed / name).read_text() == (whole / name).read_text().replace("whole", "resumed")
    calls3 = []
    R.evaluate(args(manifest, resumed), factory(calls3))  # a third run has nothing to do
    assert calls3 == []


def test_retry_errors_generates_failed_rows_again(tmp_path):
    manifest = asr_manifest(tmp_path)
    out = tmp_path / "out"
    R.evaluate(args(manifest, out, systems="text"), factory([]))
    write_wav(tmp_path / "gone.wav")  # the missing file turns up
    calls = []
    R.evaluate(args(manifest, out, systems="text"), factory(calls))
    assert calls == []  # a failed row counts as done
    scores = R.evaluate(args(manifest, out, systems="text", retry_errors=True), factory(calls))
    assert calls == [1] and scores[0].n_errors == 0 and scores[0].score == pytest.approx(0.0)


def test_a_system_that_cannot_load_is_reported_and_the_others_run(tmp_path):
    manifest = asr_manifest(tmp_path, missing=False)
    out = tmp_path / "out"
    R.evaluate(args(manifest, out), factory([], fail=("blsp",)))
    assert "adapter is not there yet" in json.loads((out / "errors.json").read_text())["blsp"]
    md = (out / "results.md").read_text()
    assert "| BLSP | not available |" in md and "BLSP could not be loaded" in md
    assert {r["system"] for r in read_csv(out / "results.csv")} == {"text", "cascade"}


def test_slu_labels_are_normalized_before_scoring(tmp_path):
    rows = []
    for i, label in enumerate(["GetWeather", "GetWeather", "PlayMusic", "GetWeather"]):
        rows.append({"id": f"i{i}", "audio": write_wav(tmp_path / f"s{i}.wav", seed=i), "reference": label,
                     "transcript": "will it rain tomorrow", "task": "intent", "dataset": "snips-tts"})
    manifest = tmp_path / "slu.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    scores = {s.system: s for s in R.evaluate(args(manifest, out, task="slu"), factory([]))}
    assert scores["text"].score == pytest.approx(75.0)  # "The intent is get weather." -> GetWeather
    assert scores["cascade"].score == pytest.approx(25.0)  # "play music" -> PlayMusic
    assert scores["blsp"].score == pytest.approx(0.0)  # no label named
    preds = {(p["system"], p["id"]): p for p in R.read_jsonl(out / "predictions.jsonl")}
    assert preds[("text", "i0")]["scored"] == "GetWeather" and preds[("blsp", "i0")]["scored"] == ""
    instr = preds[("text", "i0")]["instruction"]
    assert instr.startswith("Please classify the intent") and "get weather" in instr


class ScriptedBackend:
    """A judge backend: accepts answers mentioning a cat, replies nonsense about bread."""

    model = "fake-judge"

    def complete(self, messages):
        answer = messages[-1]["content"].split("<answer>")[1].split("</answer>")[0]
        if "bread" in answer:
            return "I like bread."  # no verdict: unjudged
        return "Verdict: acceptable" if "cat" in answer else "Verdict: unacceptable"


def FakeJudge():
    from blsp_demo.judge import Judge, ReplyCache

    return Judge(ScriptedBackend(), ReplyCache(None), concurrency=2)


def test_qa_answers_are_judged_once_and_unjudged_rows_are_counted(tmp_path, monkeypatch):
    rows = [{"id": f"q{i}", "audio": write_wav(tmp_path / f"q{i}.wav", seed=i), "reference": "x", "answers": ["cat"],
             "transcript": t, "task": "qa"} for i, t in enumerate(["the cat", "a dog", "warm bread"])]
    manifest = tmp_path / "qa.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.setattr(R, "make_judge", lambda kind, cache: FakeJudge())
    out = tmp_path / "out"
    scores = R.evaluate(args(manifest, out, task="qa", systems="text"), factory([]))
    by = {s.metric: s for s in scores}
    assert by["answer_match"].score == pytest.approx(100 / 3)
    assert by["accept_rate"].score == pytest.approx(50.0) and by["accept_rate"].n_unjudged == 1
    assert len(R.read_jsonl(out / "judgements.jsonl")) == 3
    R.evaluate(args(manifest, out, task="qa", systems="text"), factory([]))
    assert len(R.read_jsonl(out / "judgements.jsonl")) == 3  # nothing judged twice
    md = (out / "results.md").read_text()
    assert "judge `fake-judge`" in md
    # fake judge vs answer match: (accept, accept), (reject, reject); the unjudged row is left out
    assert "judge vs answer match on 2 answers: agreement 100.0%, Cohen's kappa 1.00" in md


def test_real_engines_on_a_tiny_official_checkpoint(tmp_path, official_checkpoint):
    """The harness through the real BlspEngine / TextEngine (tiny random weights)."""
    from blsp_demo.engine.loading import load_engine

    manifest = asr_manifest(tmp_path, missing=True)
    out = tmp_path / "out"
    a = args(manifest, out, systems="blsp,text", model=str(official_checkpoint), limit=4)
    engines = {}

    def make(spec, system):
        engines[system] = load_engine(spec, system)
        return engines[system]

    scores = R.evaluate(a, make)
    preds = R.read_jsonl(out / "predictions.jsonl")
    assert len(preds) == 8 and {p["system"] for p in preds} == {"blsp", "text"}
    # the missing file fails BLSP's row; the text system never reads the audio
    assert [(p["system"], p["id"]) for p in preds if p["error"]] == [("blsp", "u3")]
    assert all(isinstance(p["prediction"], str) for p in preds)
    assert {s.system for s in scores} == {"blsp", "text"}


# ---- judging the app's logs -------------------------------------------------------------------------
def test_judge_logs_appends_judgements_for_unjudged_turns_only(tmp_path):
    from blsp_demo.app.store import Store

    store = Store(tmp_path)
    turns = []
    for i, (model, answer) in enumerate([("m1", "a cat"), ("m1", "a dog"), ("m2", "the cat"), ("m2", "warm bread")]):
        turns.append(store.append("turn", "s1", modality="text", text=f"question {i}?", response=answer, model=model,
                                  error=None))
    store.append("turn", "s1", modality="speech", transcript=None, transcript_heard=None, response="x", model="m1",
                 error=None, audio_path=None)
    store.append("turn", "s1", modality="text", text="failed?", response=None, model="m1", error="boom")
    for t, verdict in zip(turns, ["accept", "accept", "accept", "reject"]):
        store.label("s1", t["id"], verdict)
    store.append("judgement", "s1", turn_id=turns[0]["id"], verdict="accept", judge_model="old", prompt_version="v0")

    todo = turns_to_judge(store.read().records, "fake-judge", "accept-v1", rejudge=False)
    assert [t["response"] for t in todo] == ["a dog", "the cat", "warm bread", "x"]  # not judged, not failed
    written = judge_turns(store, FakeJudge(), todo)
    assert [w["verdict"] for w in written] == ["reject", "accept", "unjudged", "unjudged"]
    speech = written[-1]
    assert speech["reason"].startswith("no question text")
    assert all(w["kind"] == "judgement" and w["turn_id"] and w["judge_model"] == "fake-judge" and "raw" in w
               for w in written)
    records = store.read().records
    again = turns_to_judge(records, "fake-judge", "accept-v1", rejudge=False)
    assert [t["response"] for t in again] == ["warm bread", "x"]  # unjudged ones are tried again
    report = agreement_report(records)
    # human vs judge on the 3 with both: (accept, accept), (accept, reject), (accept, accept): kappa 0
    assert "on 3 answers" in report and "kappa 0.000" in report
    assert "human accept               2             1" in report
    import pandas as pd

    for path in (tmp_path / "records").glob("*.jsonl"):
        pd.read_json(path, lines=True)  # the app's readers still read the file


def test_judge_logs_cli_prints_agreement(tmp_path, capsys):
    from blsp_demo.app.store import Store
    from evaluations import judge_logs

    store = Store(tmp_path)
    t = store.append("turn", "s", modality="text", text="q?", response="a", model="m", error=None)
    store.label("s", t["id"], "accept")
    store.close()
    judge_logs.main(["--data-dir", str(tmp_path), "--no-judge"])
    assert "1 answers logged; 1 with a human label, 0 judged." in capsys.readouterr().out


# ---- representation ---------------------------------------------------------------------------------------
def test_representation_measures_by_hand():
    a = np.array([[1.0, 0.0], [0.0, 1.0]])
    assert REP.paired_cosine(a, a) == pytest.approx([1.0, 1.0])
    assert REP.paired_cosine(a, a[::-1]) == pytest.approx([0.0, 0.0])
    # a shared offset makes every raw cosine high; centering removes it
    offset = np.array([10.0, 10.0, 0.0])
    s = np.array([[1.0, 0, 1], [0, 1.0, -1], [1.0, 1.0, 0]]) + offset
    t = np.array([[1.0, 0, 1], [0, 1.0, -1], [1.0, 1.0, 0]]) * 0.9 + offset
    shuffled = t[[1, 2, 0]]
    assert REP.paired_cosine(s, shuffled).mean() > 0.9
    cs, ct = REP.center(s, shuffled)
    assert REP.paired_cosine(cs, ct).mean() < 0.5
    assert REP.retrieval_accuracy(*REP.center(s, t)) == 1.0
    assert REP.retrieval_accuracy(*REP.center(s, shuffled)) == 0.0
    report = REP.analyse({"x": s, "y": s}, {"x": t, "y": shuffled})
    assert report["instructions"]["x"]["retrieval_accuracy"] == 1.0
    assert report["instruction_matrix"]["centered"][0][0] > report["instruction_matrix"]["centered"][0][1]
    assert REP.pca_2d(np.random.default_rng(0).normal(size=(10, 5))).shape == (10, 2)


def test_tsne_keeps_two_directions_apart_and_is_seeded():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(12, 16)) * 0.1 + np.eye(16)[0] * 3  # two groups by direction (cosine metric)
    b = rng.normal(size=(12, 16)) * 0.1 + np.eye(16)[1] * 3
    xy = REP.tsne_2d(np.concatenate([a, b]))
    assert xy.shape == (24, 2)
    within = np.linalg.norm(xy[:12] - xy[:12].mean(0), axis=1).mean()
    between = np.linalg.norm(xy[:12].mean(0) - xy[12:].mean(0))
    assert between > 3 * within
    assert np.allclose(xy, REP.tsne_2d(np.concatenate([a, b])))


def test_representation_on_a_tiny_blsp_engine(tmp_path, official_checkpoint):
    from blsp_demo.engine.loading import load_engine

    engine = load_engine(str(official_checkpoint), "blsp")
    items = [{"audio": str(tmp_path / write_wav(tmp_path / f"r{i}.wav", seed=i)), "transcript": t}
             for i, t in enumerate(ASR_TEXTS[:3])]
    speech, text = REP.collect_states(engine, items, {"repeat": "Please repeat the following words.",
                                                      "none": ""})
    assert speech["repeat"].shape == (3, engine.llm.config.hidden_size) == text["none"].shape
    report = REP.analyse(speech, text)
    assert 0.0 <= report["instructions"]["repeat"]["retrieval_accuracy"] <= 1.0
    REP.plot(speech, text, tmp_path / "r.png", "tiny")
    assert (tmp_path / "r.png").stat().st_size > 1000
    assert "| repeat |" in REP.markdown(report, "tiny")


# ---- the shipped sets ----------------------------------------------------------------------------------
def test_shipped_texts_have_at_least_100_items_per_task():
    from evaluations.data import make_sets

    rows = make_sets.task_rows()
    assert {k: len(v) >= 100 for k, v in rows.items()} == {k: True for k in rows}
    assert len({r["text"] for r in rows["qa"]}) == len(rows["qa"])  # distinct questions
    assert {r["reference"] for r in rows["sentiment"]} == {"positive", "negative", "neutral"}
    assert len({r["reference"] for r in rows["intent"]}) == 7
    assert all(r["reference"] and r["target_lang"] == "de" for r in rows["st"])


def test_make_sets_writes_manifests_the_harness_reads(tmp_path):
    from evaluations.data import make_sets

    counts = make_sets.build_tts_sets(tmp_path, only=("slu",), limit=2)
    assert counts == {"slu": 4}
    rows = R.read_manifest(tmp_path / "slu.jsonl", "slu")
    assert [r["task"] for r in rows] == ["intent", "intent", "sentiment", "sentiment"]
    assert all(Path(r["audio"]).is_file() and r["transcript"] and r["voice"].split("+")[1] in
               ("m7", "f4", "robert", "belinda") for r in rows)  # held-out voices only
    again = (tmp_path / "slu.jsonl").read_text()
    make_sets.build_tts_sets(tmp_path, only=("slu",), limit=2)
    assert (tmp_path / "slu.jsonl").read_text() == again  # deterministic


def test_real_set_from_a_sphinx_style_archive(tmp_path):
    import io
    import tarfile

    from evaluations.data import make_sets

    wav = io.BytesIO()
    sf.write(wav, np.zeros(8000, np.float32) + 0.1, 16000, format="WAV", subtype="PCM_16")
    files = {"pocketsphinx-5.1.1/test/data/cards/001.wav": wav.getvalue(),
             "pocketsphinx-5.1.1/test/data/cards/cards.transcription": b"<s> ten of clubs  </s> (001)\n",
             "pocketsphinx-5.1.1/test/data/goforward.raw": (np.zeros(4000, "<i2") + 100).tobytes()}
    archive = tmp_path / "ps.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    out = tmp_path / "out"
    assert make_sets.build_real_set(archive, out) == 2
    rows = R.read_manifest(out / "real.jsonl", "asr")
    assert [(r["id"], r["reference"], r["dataset"]) for r in rows] == [
        ("cards-001", "ten of clubs", "real-commands"), ("goforward", "go forward ten meters", "real-commands")]
    assert sf.info(rows[1]["audio"]).samplerate == 16000


@pytest.mark.slow
def test_tiny_real_run_on_the_offline_weights(tmp_path):
    """micro-cascade and micro-text (real Whisper base + SmolLM2) on 2 shipped TTS items."""
    from evaluations.data import make_sets

    make_sets.build_tts_sets(tmp_path, only=("asr",), limit=2)
    out = tmp_path / "out"
    a = R.parser().parse_args(["--manifest", str(tmp_path / "asr.jsonl"), "--task", "asr", "--systems",
                               "cascade,text", "--model", "micro-blsp", "--out", str(out), "--judge", "none"])
    scores = {s.system: s for s in R.evaluate(a)}
    assert set(scores) == {"cascade", "text"} and all(s.n == 2 and s.n_errors == 0 for s in scores.values())
    preds = R.read_jsonl(out / "predictions.jsonl")
    assert all(p["prediction"].strip() for p in preds)
    assert all(p["transcript_heard"] for p in preds if p["system"] == "cascade")
    assert scores["text"].score < 60  # SmolLM2 repeats a short sentence it is given


def test_micro_summary_checks_the_training_targets(tmp_path):
    import json

    from evaluations.micro import markdown, summarize

    header = "system,system_name,task,dataset,metric,score,ci_low,ci_high,n,n_errors,n_unjudged\n"
    sets = {("baselines", "tts-test"): ["cascade,W,asr,asr,wer,40.0,30,50,200,0,0"],
            ("model", "tts-test"): ["blsp,B,asr,asr,wer,50.0,40,60,200,0,0"],
            ("baselines", "questions-dev"): ["cascade,W,qa,questions-tts,answer_match,25.0,10,40,40,0,0"],
            ("model", "questions-dev"): ["blsp,B,qa,questions-tts,answer_match,30.0,15,45,40,0,0"]}
    for (kind, name), rows in sets.items():
        (tmp_path / kind / name).mkdir(parents=True)
        (tmp_path / kind / name / "results.csv").write_text(header + "\n".join(rows) + "\n")
    manifest = tmp_path / "real.jsonl"
    manifest.write_text("".join(json.dumps({"id": i, "reference": ref}) + "\n"
                                for i, ref in (("a", "red green blue gold"), ("b", "tall tree"))))
    (tmp_path / "baselines" / "real").mkdir()
    (tmp_path / "model" / "real").mkdir()
    preds = [("cascade", "a", "red green blue gold"), ("cascade", "b", "tall"),  # 1 error in 6 words
             ("blsp", "a", "red green"), ("blsp", "b", "tall tree")]  # 2 errors in 6 words
    for system, i, text in preds:
        folder = tmp_path / ("model" if system == "blsp" else "baselines") / "real"
        with (folder / "predictions.jsonl").open("a") as f:
            f.write(json.dumps({"system": system, "id": i, "scored": text}) + "\n")
    s = summarize(tmp_path, real_manifest=manifest)
    assert s["real_pooled_wer"]["cascade"] == pytest.approx(100 / 6) and s["real_pooled_wer"]["blsp"] == pytest.approx(200 / 6)
    assert s["checks"]["wer_tts_test_vs_cascade"] == {"value": 1.25, "target": "<= 1.5", "met": True}
    assert s["checks"]["wer_real_pooled_vs_cascade"]["value"] == pytest.approx(2.0)
    assert s["checks"]["questions_right"] == {"value": [12, 10], "target": "blsp >= cascade", "met": True}
    assert "| BLSP | 50.0 [40.0, 60.0] (n=200)" in markdown(s, "m")
