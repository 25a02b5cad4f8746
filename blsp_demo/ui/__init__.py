"""The Gradio app: one module per tab (chat, compare, annotate, dashboard) over `services.Services`.

    services = Services.create(AppSettings.from_env())
    demo = build_demo(services)
    demo.launch(**launch_options(services))
"""

from __future__ import annotations

import os

from blsp_demo.app.services import EnginePool, Services

TITLE = "BLSP demo: talk to a speech-language model"
CSS = "#chat .message audio { max-width: 100%; } footer { display: none !important; }"
INTRO = (
    "## {title}\n"
    "Speak (record or upload) or type; switch freely within one conversation. A frozen Whisper encoder "
    "feeds a frozen LLM through a trained adapter (BLSP); *cascade* models transcribe with Whisper first. "
    "Rate every answer with the thumbs under it, or let two anonymous systems answer in **Compare** and vote. "
    "Off localhost the browser only offers the microphone over **HTTPS**."
)


def build_demo(services: Services):
    import gradio as gr

    from blsp_demo.ui.annotate import build_annotate_tab
    from blsp_demo.ui.chat import build_chat_tab
    from blsp_demo.ui.compare import build_compare_tab
    from blsp_demo.ui.dashboard import build_dashboard_tab

    concurrency = int(os.environ.get("BLSP_CONCURRENCY", "2"))
    with gr.Blocks(title=TITLE, analytics_enabled=False) as demo:
        gr.Markdown(INTRO.format(title=TITLE))
        with gr.Tab("Chat"):
            chat = build_chat_tab(services, concurrency)
        with gr.Tab("Compare"):
            build_compare_tab(services, chat, concurrency)
        with gr.Tab("Annotate") as annotate_tab:
            build_annotate_tab(services, chat.state, annotate_tab)
        with gr.Tab("Dashboard") as dashboard_tab:
            build_dashboard_tab(services, dashboard_tab, chat.state)
    demo.queue(default_concurrency_limit=concurrency, max_size=64)
    return demo


def launch_options(services: Services, **overrides) -> dict:
    """Keyword arguments for `demo.launch` (host, port, the folders the UI may serve, the upload
    size limit, security headers, styling)."""
    from starlette.middleware import Middleware

    from blsp_demo.ui.annotate import KEYS_JS
    from blsp_demo.ui.web_guard import RejectedUploads, SecurityHeaders

    middleware = [Middleware(SecurityHeaders), Middleware(RejectedUploads, store=services.store)]
    options = dict(server_name=services.settings.host, server_port=services.settings.port,
                   allowed_paths=services.allowed_paths(), max_file_size=services.settings.max_file_size,
                   app_kwargs={"middleware": middleware}, css=CSS, head=KEYS_JS, show_error=True)
    options.update(overrides)
    return options


__all__ = ["EnginePool", "Services", "build_demo", "launch_options"]
