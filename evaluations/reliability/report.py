"""REPORT.md from the results of `python -m evaluations.reliability` (a dict, also in results.json)."""

from __future__ import annotations


def _s(x) -> str:
    return "–" if x is None else (f"{x:.2f}" if isinstance(x, float) else str(x))


def _ok(problems) -> str:
    return "pass" if not problems else "**FAIL**"


def render_report(r: dict) -> str:
    o, m = r["options"], r["machine"]
    parts = [
        "# Reliability report\n",
        "Regenerate with `python -m evaluations.reliability` (every figure below is measured by that run; "
        "the scenario code is in `evaluations/reliability/`, shared with `tests/test_hardening_*.py`).\n",
        f"Run {m['date']} on {m['cpus']} CPUs ({m['platform']}, Python {m['python']}; load average "
        f"{m.get('load_average', '–')} at the start: other work shared the CPUs); real app "
        f"(`python app.py`, micro-cascade: Whisper base + SmolLM2-135M-Instruct, CPU, one torch thread, "
        f"default queue: 2 generations at once, max queue 64), answers capped at {o['max_new_tokens']} new tokens. "
        f"Whole run: {r['wall_s']:.0f} s.\n",
        summary_table(r),
        inputs_section(r["inputs"]),
        load_section(r["load"]),
        crash_section(r["crash"]),
        judge_section(r["judge"]),
        leaks_section(r["limits_leaks"], r["secrets"]),
        round2_section(r["round2"]) if "round2" in r else "",
    ]
    return "\n".join(parts)


def summary_table(r: dict) -> str:
    i, ld, c, j, ll, s = (r["inputs"]["summary"], r["load"], r["crash"], r["judge"], r["limits_leaks"], r["secrets"])
    inj = r["inputs"]["injection"]
    render = ll["render"]
    rows = [
        ("Bad inputs", f"{i['passed']}/{i['cases']} cases right ({i['answered']} answered, "
                       f"{i['cases'] - i['answered']} refused with a message)", _ok(i["failures"])),
        ("Prompt injection aimed at the judge", f"{sum(x['ok'] for x in inj)}/{len(inj)} flagged and cut",
         _ok([x for x in inj if not x["ok"]])),
        ("Load", f"{ld['sessions']} sessions, {ld['turns_answered']}/{ld['turns_planned']} turns, "
                 f"{len(ld['errors'])} errors, {len(ld['leaks'])} leaks, labels {ld['labels_written']} written / "
                 f"{ld['labels_acked']} acknowledged", _ok(ld["problems"])),
        ("TTFT (client)", f"p50 {_s(ld['ttft']['p50'])} s, p95 {_s(ld['ttft']['p95'])} s", ""),
        ("Queue wait", f"p50 {_s(ld['queue_wait']['p50'])} s, p95 {_s(ld['queue_wait']['p95'])} s", ""),
        ("SIGKILL mid-load + restart", f"{c['turns_found']}/{c['turns_acked']} acknowledged turns and "
                                      f"{c['labels_found']}/{c['labels_acked']} labels found once, "
                                      f"{len(c['duplicated'])} duplicates", _ok(c["problems"])),
        ("Judge outages", f"{len(j['results'])} kinds, every row unjudged with its reason; rerun judged "
                          f"{j['rerun_judged']}/{j['rerun_rows']}", _ok(j["problems"])),
        ("Path traversal", f"{ll['traversal']['probes']} probes, {len(ll['traversal']['leaked'])} served a file",
         _ok(ll["traversal"]["leaked"] or not ll["traversal"]["control_served"])),
        ("Planted secrets", f"searched {s['sources']} sources, found in {len(s['found_in'])}", _ok(s["found_in"])),
        ("Hostile text in a browser", "not run (no chromium)" if render is None else
         f"{render['texts']} texts: script ran: {render['pwned'] is not None or bool(render['dialogs'])}, "
         f"remote fetches: {len(render['tracker_hits'])}", "" if render is None else _ok(render["problems"])),
        *round2_rows(r.get("round2")),
        ("Rate limit", f"flood of {ll['flood']['burst']}: {ll['flood']['answered']} answered, "
                       f"{ll['flood']['refused']} refused at once; bystander {ll['flood']['bystander_s']} s "
                       f"(quiet {ll['flood']['baseline_s']} s); per-minute limit refused attempt "
                       f"{ll['per_minute']['refused_at']}", _ok(ll["flood"]["problems"] + ll["per_minute"]["problems"])),
    ]
    lines = ["## Summary\n", "| scenario | measured | result |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    return "\n".join(lines) + "\n"


def inputs_section(x: dict) -> str:
    lines = ["## 1. Bad inputs\n",
             "Each case in a gradio_client session of its own against the running app. A refused case comes "
             "after a first turn; its follow-up must equal, in history, answer, prefilled and cached positions, "
             "the follow-up of a session that never sent it (conversation and KV cache unchanged). An answered "
             "case opens its conversation; its follow-up must reuse the KV cache of its turn. Every attempt is "
             "in the data dir (the oversize upload, which Gradio refuses before any session sees it, as a "
             "`rejected` record).\n",
             "| case | expected | got | seconds | what the person saw | result |", "|---|---|---|---|---|---|"]
    for c in x["cases"]:
        shown = " ".join(str(c["shown"]).split())[:110].replace("|", "\\|")
        lines.append(f"| {c['name']} | {c['expect']} | {c['outcome']} | {c['seconds']:.1f} | {shown} | "
                     f"{'pass' if c['ok'] else '**FAIL**: ' + '; '.join(c['problems'])} |")
    lines += ["", "Prompt injection aimed at the judge (the logged turns judged by a gullible fake judge that "
              "obeys 'ignore the above'):", ""]
    for c in x["injection"]:
        lines.append(f"- {c['question'][:100]!r}: verdict {c['verdict']}, flags {c['flags']}, injected sentence "
                     f"reached the judge: {c['reached_judge']}")
    return "\n".join(lines) + "\n"


def load_section(x: dict) -> str:
    lines = ["## 2. Load\n",
             f"{x['sessions']} gradio_client sessions started together, {x['turns_planned'] // max(1, x['sessions'])} "
             "turns each (text, speech, text, speech, text), each about a made-up word of its own, a label on "
             f"every answer. Wall time {x['wall_s']} s.\n",
             f"- turns answered: {x['turns_answered']}/{x['turns_planned']}; errors: {len(x['errors'])}",
             f"- cross-session leakage: {len(x['leaks'])} (every streamed partial, history and detail searched "
             "for the other sessions' words; turns, sessions, conversations and audio hashes checked in the log)",
             f"- labels: {x['labels_acked']} acknowledged, {x['labels_written']} written, "
             f"{len(x['labels_missing'])} missing, {len(x['labels_duplicated'])} duplicated",
             f"- records: {x['bad_lines']} bad lines; pandas reads every file: {x['pandas_ok']}", "",
             "| seconds | n | p50 | p95 | max |", "|---|---|---|---|---|"]
    for name, p in (("TTFT, all turns", x["ttft"]), ("TTFT, speech", x["ttft_by_modality"]["speech"]),
                    ("TTFT, text", x["ttft_by_modality"]["text"]), ("queue wait", x["queue_wait"])):
        lines.append(f"| {name} | {p['n']} | {_s(p['p50'])} | {_s(p['p95'])} | {_s(p['max'])} |")
    lines += ["", "TTFT: from `submit` to the first answer token the client sees (upload, queue, ASR for speech, "
              "prefill). Queue wait: from `submit` to the server starting the job. With 2 generations at once "
              "on a shared CPU, most of the TTFT at this load is waiting for a slot."]
    return "\n".join(lines) + "\n"


def crash_section(x: dict) -> str:
    return "\n".join([
        "## 3. Crash safety\n",
        f"The same load ({x['sessions']} sessions) on a second server, SIGKILL to its process group after "
        f"{x['labels_acked']} acknowledged labels ({x['seconds_to_kill']} s in); then half a record appended "
        "to the dead writer's file, as a kill inside `write` would leave it; restart on the same data dir "
        f"({x['restart_s']} s).\n",
        f"- acknowledged turns found exactly once: {x['turns_found']}/{x['turns_acked']}",
        f"- acknowledged labels found exactly once: {x['labels_found']}/{x['labels_acked']}",
        f"- records written but never acknowledged (in flight at the kill): {x['written_not_acked']}",
        f"- duplicated records: {len(x['duplicated'])}; missing: {len(x['missing'])}",
        f"- torn last line skipped and reported by the reader before the restart: {x['torn_reported_before_restart']}; "
        f"moved to recovered/ by the restart: {x['recovered_fragments']} fragment(s); bad lines after: "
        f"{x['bad_lines_after_restart']}; pandas reads every file: {x['pandas_ok']}",
        f"- the restarted server answers a new session (turn + label): {x['answers_after_restart']}",
        f"- problems: {x['problems'] or 'none'}", ""])


def judge_section(x: dict) -> str:
    lines = ["## 4. Judge outages\n",
             f"{x['rows']} answered turns from the load, judged with `evaluations.judge_logs` against a fake "
             "OpenAI-compatible server on loopback in each outage in turn (request timeout 0.5 s, 2 retries, "
             "deadline 3 s per row, 4 rows at a time), then once with the server well.\n",
             "| outage | rows | unjudged | reason | requests (max per row) | wall s | deadline bound s |",
             "|---|---|---|---|---|---|---|"]
    for o in x["results"]:
        lines.append(f"| {o['outage']} | {o['rows']} | {o['unjudged']} | {'; '.join(o['reasons'])} | "
                     f"{o['requests']} ({o['max_requests_per_row']}) | {o['wall_s']} | {o['bound_s']} |")
    lines += ["", f"Rerun with the server well: {x['rerun_judged']}/{x['rerun_rows']} judged, "
              f"{x['left_after_rerun']} left. Problems: {x['problems'] or 'none'}."]
    return "\n".join(lines) + "\n"


def leaks_section(x: dict, s: dict) -> str:
    t, f, pm, render = x["traversal"], x["flood"], x["per_minute"], x["render"]
    lines = ["## 5. Leaks and limits\n",
             f"- Path traversal: {t['probes']} probes (the file routes in 8 spellings each, the upload route with "
             "a climbing file name, /chat_audio and /compare given paths) at the records, the app source, "
             f"/etc/passwd, /proc/self/environ and a marker file beside the data dir: {len(t['leaked'])} served "
             f"anything; answers seen: {', '.join(t['statuses'])}. Control (a spoken example is served): "
             f"{t['control_served']}.",
             f"- Planted `OPENAI_API_KEY` and `HF_TOKEN` in both servers' environment; searched {s['sources']} "
             "sources (server logs, every file of the data dirs, CSV/JSONL/Parquet exports, the page, /config, "
             f"the API description, every error message shown): found in {s['found_in'] or 'none'}.",
             f"- Rendering: chat sanitizer and image policy problems: {x['inert_config'] or 'none'}."]
    if render is not None:
        lines.append(f"- Headless Chromium typed {render['texts']} hostile texts (script, onerror, iframe, svg onload, "
                     f"javascript: link, markdown image to a tracker): answered {render['answered']}, script ran: "
                     f"{render['pwned'] is not None or bool(render['dialogs'])}, tracker requests: "
                     f"{len(render['tracker_hits'])}, live elements in the chat: {render['live_elements']}.")
    lines += ["- Upload size limit: 50 MB (`BLSP_MAX_FILE_SIZE`); see the oversize case above.",
              f"- Rate limit (`BLSP_TURNS_PER_MINUTE`, one turn at a time per session): one client submitted "
              f"{f['burst']} questions at once: {f['answered']} answered, {f['refused']} refused at once with the "
              f"reason ({f['refusals_logged']} logged), all back in {f['burst_s']} s; another session's question "
              f"took {f['bystander_s']} s during the flood ({f['baseline_s']} s on a quiet server). The per-minute "
              f"limit of {pm['limit']} refused attempt {pm['refused_at']}: \"{pm['message']}\""]
    return "\n".join(lines) + "\n"


def round2_section(x: dict) -> str:
    s, rot, d = x["surrogates"], x["rotation"], x["disk"]
    lines = ["## 6. Round 2 (issue 20)\n",
             f"A server that limits by address (the app's default, `BLSP_LIMIT_BY=address`) with a Compare "
             f"pair, then a server on a 1 MB tmpfs data dir. {x['wall_s']:.0f} s"
             + (f", run {x['machine']['date']} (load average {x['machine']['load_average']})" if "machine" in x else "")
             + ".\n",
             "**Lone surrogates** (`\"x \\ud800 y\"`, sent through the queue API in ASCII escapes): "
             + "; ".join(f"{k}: {v}" for k, v in s["sent"].items()) + ".",
             "", "| view (a new visitor) | before the restart | after the restart |", "|---|---|---|"]
    lines += [f"| {k} | {v} | {s['views_after_restart'].get(k, '–')} |" for k, v in s["views"].items()]
    lines += ["", f"Lone surrogates in the records: {s['bad_bytes_on_disk']}. Problems: {s['problems'] or 'none'}.", "",
              f"**Rotating session hashes** (every turn from a new hash, one address): {rot['parallel']} turns at once: "
              f"{rot['parallel_admitted']} admitted (limit {rot['at_once_limit']} at once per address); then "
              f"{rot['sequential']} one after another: {len(rot['admitted_times'])} admitted, at most "
              f"{rot['max_in_a_minute']} within any minute (limit {rot['per_minute_limit']}). Refused with: "
              f"\"{rot['refusal'][:160]}\" With the earlier default of 2 at once the same scenario admitted 7 of 7 "
              "(2026-12-02): the queue starts jobs as its 2 slots free up, so one address never had more than 2 "
              "running, yet held both slots while its other jobs waited; the issue's first test measured 28 in 22 s. "
              f"Problems: {rot['problems'] or 'none'}.", ""]
    if not d["ran"]:
        lines.append(f"**Full disk**: not run ({d['why_not']}).")
    else:
        lines += [f"**Full disk** (a turn, the tmpfs filled, {len(d['refused'])} long turns, space freed, one more "
                  "turn): people were told: " + "; ".join(sorted(set(d["refused"]))),
                  f"Whole lines only: {d['whole_lines']}; pandas reads every file: {d['pandas_ok']}; turns on disk: "
                  f"{d['texts_on_disk']}. Before the fix: a raw `[Errno 28]`, a partial line mid-file with later "
                  f"records glued on, and failed turns written later. Problems: {d['problems'] or 'none'}."]
    if "origin" in x:
        o = x["origin"]
        lines += ["", f"**Requests to other hosts** (headless Chromium, a question typed and tabs "
                  f"{', '.join(o['tabs'])} opened, planted question, answer, label and vote reasons with `<audio src>`, "
                  f"`<img>`, `<video>`, `<source>`, `<form action>`, `<iframe>`, `<link>`, CSS `url()` and a markdown "
                  f"image aimed at a counter on another port): {o['requests']} requests; to another origin "
                  f"{len(o['away_attempted'])} attempted (blocked by the page's Content-Security-Policy), "
                  f"{len(o['away_answered'])} answered, {len(o['counter_hits'])} arrived at the counter. "
                  f"Problems: {o['problems'] or 'none'}."]
    if "soak" in x:
        lines += ["", soak_text(x["soak"], x["races"])]
    return "\n".join(lines) + "\n"


def soak_text(k: dict, races: list[dict]) -> str:
    rows = "; ".join(f"{a}: {mb:.0f} MB" for a, mb in k["rss_mb"].items())
    sizes = k["reply_bytes"]
    lines = ["**Reset and deletion during a streaming answer** (answers of up to 200 tokens; the action 0.8 s after the "
             "question): " + "; ".join(f"{r['action']}: landed mid-answer {r['hit']}, {r['after']}, problems "
                                      f"{r['problems'] or 'none'}" for r in races) + ".", "",
             f"**Soak** (server RSS every 2 s; session time-to-live `BLSP_SESSION_TTL_S={k['ttl_s']:.0f}`): "
             f"one conversation of {k['turns']} turns, then {k['abandoned_sessions']} sessions of one turn "
             f"each left open, then idle past the time-to-live. {rows}. Failed turns: {k['failed']}. "
             f"The reply's size (the whole chat history goes back each turn, as Gradio's Chatbot sends it): "
             f"{sizes[0] if sizes else 0} bytes at turn 1, {sizes[-1] if sizes else 0} at turn {len(sizes)}. "
             "The issue measured +522 MB for a 34-turn conversation and +266 MB still held a minute after 50 "
             "abandoned sessions.", "", "![server RSS over the soak](soak-rss.png)"]
    return "\n".join(lines)


def round2_rows(x: dict | None) -> list[tuple]:
    if x is None:
        return []
    s, rot, d = x["surrogates"], x["rotation"], x["disk"]
    return [("Lone surrogates everywhere", f"{len(s['sent'])} places; views ok before/after restart: "
             f"{sum(v == 'ok' for v in s['views'].values())}/{len(s['views'])}, "
             f"{sum(v == 'ok' for v in s['views_after_restart'].values())}/{len(s['views_after_restart'])}",
             _ok(s["problems"])),
            ("Rotating session hashes", f"{rot['parallel_admitted']}/{rot['parallel']} at once, at most "
             f"{rot['max_in_a_minute']} in a minute of {rot['sequential']}", _ok(rot["problems"])),
            ("Full disk (1 MB tmpfs)", "not run" if not d["ran"] else
             f"whole lines: {d['whole_lines']}, pandas reads: {d['pandas_ok']}, turns on disk {len(d['texts_on_disk'])}",
             "" if not d["ran"] else _ok(d["problems"])),
            *([("Reset / deletion mid-answer", ", ".join(f"{r['action']}: hit {r['hit']}" for r in x["races"]),
                _ok([p for r in x["races"] for p in r["problems"]])),
               ("Soak RSS", " → ".join(f"{mb:.0f}" for mb in x["soak"]["rss_mb"].values()) + " MB", _ok(x["soak"]["problems"]))]
              if "soak" in x else [])]
