"""What the restructure promised: old data dirs load into the record dataclasses, each clip is
hashed once where it enters, the system names the engine, loops end an answer, and the README's
library example runs."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from blsp_demo.app.records import RECORD_TYPES, LabelRecord, TurnRecord, record_from_json
from blsp_demo.app.store import Store, answers_frame, live_records, read_records, votes_frame
from blsp_demo.conversation import Conversation, SpeechClip
from blsp_demo.engine.decoding import cut_loop, loop_at_end
from blsp_demo.options import GenerationOptions
from blsp_demo.prompts import get_template

ROOT = Path(__file__).resolve().parents[1]
OLD_DATA_DIR = Path(__file__).parent / "data" / "datadir-v1"  # written by the code before the restructure


@pytest.fixture
def old_data(tmp_path) -> Path:
    return Path(shutil.copytree(OLD_DATA_DIR, tmp_path / "data"))


def test_a_data_dir_of_the_previous_version_loads(old_data):
    import pandas as pd

    result = read_records(old_data)
    assert not result.bad_lines and {r["kind"] for r in result.records} == set(RECORD_TYPES)
    for path in (old_data / "records").glob("*.jsonl"):
        assert len(pd.read_json(path, lines=True)) == len(result.records)
    for raw in result.records:  # every record has its dataclass, and nothing on disk is lost by it
        again = record_from_json(raw).to_json()
        assert {k: again[k] for k in raw} == raw
        assert all(again[k] in (None, "", [], {}) for k in set(again) - set(raw))  # new fields: defaults
    answers = answers_frame(result.records)
    labelled = answers.dropna(subset=["label"])
    assert len(answers) == 4 and sorted(labelled["label"]) == ["accept", "reject"]  # bob's turn was deleted
    assert list(votes_frame(result.records)["choice"]) == ["A"]
    assert not [r for r in live_records(result.records) if r.get("session") == "s-bob" and r["kind"] == "turn"]


def test_new_records_are_written_beside_old_ones(old_data):
    store = Store(old_data)
    turn = store.write(TurnRecord(session="s-new", modality="text", text="hi", model="m", response="hello"))
    store.write(LabelRecord(session="s-new", turn_id=turn["id"], verdict="accept", annotator="ann"))
    store.close()
    records = read_records(old_data).records
    assert len(answers_frame(records)) == 5
    label = [r for r in records if r["kind"] == "label"][-1]
    assert label["annotator"] == "ann" and label["id"] and label["ts"] and label["turn_id"] == turn["id"]


def test_unknown_kinds_and_fields():
    with pytest.raises(ValueError, match="unknown record kind"):
        record_from_json({"kind": "nope"})
    rec = record_from_json({"kind": "label", "id": "x", "ts": "t", "session": "s", "turn_id": "t1",
                            "verdict": "accept", "reason": "", "from_the_future": 1})
    assert rec.extra == {"from_the_future": 1} and rec.to_json()["from_the_future"] == 1


def test_loop_detector():
    assert loop_at_end([1, 2, 3, 4, 5]) is None
    assert loop_at_end([9] + [5, 6, 7] * 4) == (3, 4)
    assert cut_loop([9] + [5, 6, 7] * 4) == [9, 5, 6, 7]
    assert cut_loop([1, 2] * 3) is None  # 6 tokens: too short to call a loop
    assert cut_loop([4] * 12) == [4]


def tiny_parts(official_checkpoint):
    from transformers import AutoTokenizer, WhisperFeatureExtractor

    from blsp_demo.model.blsp import BlspModel

    return (BlspModel.from_pretrained(official_checkpoint).eval(), AutoTokenizer.from_pretrained(official_checkpoint),
            WhisperFeatureExtractor.from_pretrained(official_checkpoint))


def test_a_looping_answer_ends_with_finish_reason_loop(official_checkpoint, monkeypatch):
    import torch

    from blsp_demo.engine import chat
    from blsp_demo.engine.build import text_engine

    model, tok, _ = tiny_parts(official_checkpoint)
    engine = text_engine(model.llama_model, tok, get_template("blsp"), model_id="tiny")
    cycle = iter([40, 41, 42] * 50)
    monkeypatch.setattr(chat, "pick_next", lambda *a, **k: torch.tensor([next(cycle)]))
    r = engine.respond(Conversation().add_text("hello"), GenerationOptions(max_new_tokens=60))
    assert r.finish_reason == "loop" and r.new_tokens == 3
    cycle = iter([40, 41, 42] * 50)
    off = engine.respond(Conversation().add_text("hello"), GenerationOptions(max_new_tokens=30, loop_guard=False))
    assert off.finish_reason == "length" and off.new_tokens == 30


def test_the_engine_is_named_after_its_system(official_checkpoint):
    from blsp_demo.engine.build import blsp_engine, cascade_engine, text_engine

    model, tok, fx = tiny_parts(official_checkpoint)
    tpl = get_template("blsp")
    assert blsp_engine(model, tok, fx, template=tpl, model_id="a").name == "blsp"
    assert cascade_engine(model.llama_model, tok, tpl, lambda s: "x", model_id="b").name == "cascade"
    assert cascade_engine(model.llama_model, tok, tpl, lambda s: "x", system="ctc", model_id="c").name == "ctc"
    assert text_engine(model.llama_model, tok, tpl, model_id="d").name == "text"


def test_each_clip_is_hashed_once_where_it_enters(official_checkpoint, tmp_path, monkeypatch):
    """Three spoken turns through the app's Chat and a real (tiny) BLSP engine: three hashes."""
    import hashlib

    from blsp_demo.app.services import EnginePool, Services
    from blsp_demo.app.session import Chat, ChatSettings, ChatState, UserInput
    from blsp_demo.app.settings import AppSettings
    from blsp_demo.engine.build import blsp_engine

    model, tok, fx = tiny_parts(official_checkpoint)
    engine = blsp_engine(model, tok, fx, template=get_template("blsp"), model_id="tiny")
    services = Services(AppSettings(model="tiny", data_dir=tmp_path), EnginePool(lambda spec: engine),
                        Store(tmp_path / "data"))
    calls = []
    real = hashlib.file_digest
    monkeypatch.setattr(hashlib, "file_digest", lambda f, d: calls.append(1) or real(f, d))
    chat, state = Chat(services), ChatState()
    wavs = sorted((ROOT / "examples").glob("*.wav"))[:3]
    for wav in wavs:
        for step in chat.answer(state, ChatSettings("tiny", GenerationOptions(max_new_tokens=3)), UserInput(audio=str(wav))):
            state = step.state
    assert state.user_turns == 3 and len(calls) == 3


def test_speech_clip_of_a_missing_file():
    clip = SpeechClip.of("/no/such/file.wav")
    assert clip.sha256 is None and Conversation().add_speech(clip).turns[0].audio == "/no/such/file.wav"


@pytest.mark.slow
def test_the_readme_library_example_runs(tmp_path, monkeypatch):
    """The README's "Library" block, as written, on the real offline default model."""
    block = re.search(r"## Library\n\n```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S).group(1)
    shutil.copy(ROOT / "examples" / "capital_of_france.wav", tmp_path / "question.wav")
    monkeypatch.chdir(tmp_path)
    printed = []
    exec(compile(block, "README.md", "exec"), {"print": lambda *a, **k: printed.append(" ".join(map(str, a)))})
    assert "".join(printed).strip()
