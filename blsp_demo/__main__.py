"""Command line: `python -m blsp_demo chat|record|models ...` (see --help of each)."""

from __future__ import annotations

import argparse
import json
import sys

from blsp_demo.engine.registry import DEFAULT_MODEL
from blsp_demo.options import GenerationOptions


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None,
                   help=f"model spec: a registered name (micro-blsp, micro-cascade, micro-text), a local "
                        f"checkpoint folder or a Hugging Face Hub repo id (default: $BLSP_MODEL or {DEFAULT_MODEL})")
    p.add_argument("--system", choices=["blsp", "cascade", "text"], default=None,
                   help="how speech reaches the LLM (default: the model's own)")
    p.add_argument("--device", default=None, help="cuda, mps or cpu (default: the best available)")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--beams", type=int, default=1, help="beam search width (no streaming when > 1)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--json", action="store_true", help="print one JSON object per answer instead of streaming text")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m blsp_demo",
                                     description="Talk to BLSP-style speech-language models.")
    sub = parser.add_subparsers(dest="command", required=True)
    chat = sub.add_parser("chat", help="answer one turn: speech (--audio), text (--text), or both in order",
                          description="Answer one user turn. With --audio and --text both given, the audio is "
                                      "one turn and the text a second turn in the same conversation.")
    _add_model_args(chat)
    chat.add_argument("--audio", help="audio file (any format ffmpeg reads)")
    chat.add_argument("--text", help="a typed turn")
    chat.add_argument("--instruction", default="", help="text placed before the speech (e.g. 'Please repeat the following words.')")
    chat.add_argument("--transcript", default=None, help="known transcript of --audio (used by the text system)")
    chat.add_argument("--no-speech-check", action="store_true",
                      help="answer --audio even when voice-activity detection finds no speech in it")
    rec = sub.add_parser("record", help="record a question from the local microphone and answer it")
    _add_model_args(rec)
    rec.add_argument("--seconds", type=float, default=None, help="record this long (default: until Enter)")
    rec.add_argument("--input-device", default=None, help="sounddevice input device (index or name)")
    rec.add_argument("--list-devices", action="store_true", help="list audio input devices and exit")
    rec.add_argument("--instruction", default="")
    rec.add_argument("--keep", default=None, help="also save the recording to this WAV file")
    sub.add_parser("models", help="list the registered models")
    return parser


def options_from(args) -> GenerationOptions:
    return GenerationOptions(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                             top_p=args.top_p, num_beams=args.beams, seed=args.seed).validate()


def run_turns(engine, conv, turns, options, as_json: bool) -> int:
    """Each (kind, value, instruction, transcript) in `turns` is one user turn, answered in order."""
    for kind, value, instruction, transcript in turns:
        conv = conv.add_speech(value, instruction, transcript) if kind == "audio" else conv.add_text(value)
        response = None
        for chunk in engine.stream(conv, options):
            if not as_json and chunk.delta:
                print(chunk.delta, end="", flush=True)
            response = chunk.response or response
        conv = conv.add_reply(response.text)
        if as_json:
            print(json.dumps({"model": engine.model_id, "system": engine.name, "response": response.text,
                              **response.to_dict()}, ensure_ascii=False))
        else:
            print(f"\n[{response.ttft_s * 1000:.0f} ms to first token, {response.tokens_per_s:.1f} tokens/s]",
                  file=sys.stderr)
    return 0


def cmd_chat(args) -> int:
    from blsp_demo.audio import AudioError
    from blsp_demo.conversation import Conversation
    from blsp_demo.engine.loading import load_engine
    from blsp_demo.weights.sources import WeightsError

    if not args.audio and not args.text:
        print("error: give --audio FILE and/or --text TEXT", file=sys.stderr)
        return 2
    try:
        if args.audio and not getattr(args, "no_speech_check", False):  # noise, music, hum: refused before loading a model
            from blsp_demo.audio import load_audio
            from blsp_demo.speech_presence import SpeechDetector

            SpeechDetector().check(load_audio(args.audio))
        engine = load_engine(args.model or _default_model(), args.system, device=args.device)
        turns = []
        if args.audio:
            turns.append(("audio", args.audio, args.instruction, args.transcript))
        if args.text:
            turns.append(("text", args.text if args.audio or not args.instruction else f"{args.instruction}\n{args.text}", "", None))
        return run_turns(engine, Conversation(), turns, options_from(args), args.json)
    except (AudioError, WeightsError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1


def _default_model() -> str:
    import os

    return os.environ.get("BLSP_MODEL") or DEFAULT_MODEL


def cmd_record(args) -> int:
    from blsp_demo.recording import RecordingError, list_input_devices, record_to_wav

    try:
        if args.list_devices:
            print(list_input_devices())
            return 0
        path = record_to_wav(seconds=args.seconds, device=args.input_device, keep=args.keep)
    except RecordingError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    args.audio, args.text, args.transcript = path, None, None
    return cmd_chat(args)


def cmd_models(_args) -> int:
    from blsp_demo.engine.registry import DEFAULT_MODEL, REGISTRY
    from blsp_demo.weights.llms import get_llm

    for name, entry in REGISTRY.items():
        llm = get_llm(entry.llm)
        default = "  (default)" if name == DEFAULT_MODEL else ""
        hub_note = f"; without those packages: Hub {llm.hub.repo_id}@{llm.hub.revision}" if llm.hub else ""
        print(f"{name:15s} {entry.system:8s} {entry.description}{default}\n{'':24s}LLM {llm.name}: {llm.licence}; "
              f"{llm.source}{hub_note}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from blsp_demo.weights.devices import set_threads

    set_threads()
    return {"chat": cmd_chat, "record": cmd_record, "models": cmd_models}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
