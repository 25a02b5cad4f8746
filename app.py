"""The BLSP demo app: settings -> engines -> UI -> launch.

    python app.py [--host H] [--port P] [--model SPEC] [--data-dir DIR]

Settings also come from the environment (BLSP_MODEL, BLSP_DATA_DIR, HF_DATASET_REPO, ...; see
`blsp_demo.app.settings.AppSettings`). The page is up at once; the model loads in the background and the
first question waits for it.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal

from blsp_demo.app.hub_push import final_push
from blsp_demo.app.settings import AppSettings
from blsp_demo.app.store import DataDirError
from blsp_demo.weights.devices import set_threads
from blsp_demo.ui import Services, build_demo, launch_options


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Talk to a BLSP speech-language model in the browser.")
    p.add_argument("--host", default=None, help="interface to listen on (default 127.0.0.1; "
                                                "$GRADIO_SERVER_NAME, e.g. 0.0.0.0 on Spaces)")
    p.add_argument("--port", type=int, default=None, help="port (default 7860)")
    p.add_argument("--model", default=None, help="model spec: micro-cascade, micro-blsp, a folder or a Hub id")
    p.add_argument("--data-dir", default=None, help="where logs and audio go (default ./data)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    set_threads()
    settings = AppSettings.from_env(model=args.model, data_dir=args.data_dir, port=args.port,
                                    host=args.host or os.environ.get("GRADIO_SERVER_NAME"))
    try:
        services = Services.create(settings)
    except DataDirError as err:  # a read-only or missing data dir: a clear message, no traceback
        raise SystemExit(f"error: {err}") from None
    install_sigterm_push(services)
    loading = services.pool.preload(settings.model)
    if os.environ.get("SPACES_ZERO_GPU"):  # ZeroGPU: the model must be on `cuda` before the first request
        loading.join()
    build_demo(services).launch(**launch_options(services))


def install_sigterm_push(services) -> None:
    """On SIGTERM (a Space stopping or restarting): push the data dir to the dataset, then exit."""
    def on_sigterm(signum, frame):
        logging.getLogger("app").info("SIGTERM: final push of the data dir, then exit")
        final_push(services.scheduler)
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, on_sigterm)


if __name__ == "__main__":
    main()
