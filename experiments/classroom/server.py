"""Serve the classroom page with Panel's bokeh server, on this machine only unless asked otherwise.

Every script and stylesheet the page needs is served by this process (bokeh's and Panel's bundled
resources), so a classroom without internet works.
"""
from __future__ import annotations

import os
import threading

# Panel points some stylesheets at its CDN until it renders a page (and keeps a few there when the
# machine is busy: seen with loading.css, button.css, divider.css); its air-gap setting moves that
# CDN root to a route of this server, which serves Panel's bundled files. Set before Panel is imported.
CDN_ROUTE = "panel-cdn"
os.environ.setdefault("PANEL_CDN_ROOT", f"/{CDN_ROUTE}/")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 5006
# a closed tab's session (and its training) ends this soon after its connection drops
SESSION_CHECK_MS = 500
SESSION_LIFETIME_MS = 1000


def make_server(host: str = DEFAULT_HOST, port: int = DEFAULT_PORT):
    import panel as pn
    import torch
    from panel.io.resources import DIST_DIR, JS_VERSION

    from experiments.classroom.page import build_page
    from experiments.classroom.settings import learners

    # several small networks train at once (tabs, compared rules) on few cores: one thread each
    torch.set_num_threads(1)
    learners()   # import every rule now, not on the first page load
    local = host in ("127.0.0.1", "localhost")
    # shared on purpose (--host), the page answers whatever name the class reaches this machine by
    origins = sorted({f"{host}:{port}", f"localhost:{port}", f"127.0.0.1:{port}"}) if local else ["*"]
    return pn.serve({"/": build_page}, port=port, address=host, websocket_origin=origins, show=False,
                    start=False, title="altlearn classroom", verbose=False, location=False,
                    static_dirs={f"{CDN_ROUTE}/{JS_VERSION}/dist": str(DIST_DIR)},
                    check_unused_sessions_milliseconds=SESSION_CHECK_MS,
                    unused_session_lifetime_milliseconds=SESSION_LIFETIME_MS)


def serve(host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, open_browser: bool = False) -> None:
    server = make_server(host, port)
    server.start()
    # torch's one-off imports at the first optimiser and FLOP count (seconds on a busy laptop) are paid
    # while the teacher looks at the page, not after the first Start
    from experiments.app import _warm_up_torch
    threading.Thread(target=_warm_up_torch, name="classroom-warm-up", daemon=True).start()
    local = host in ("127.0.0.1", "localhost")
    url = f"http://{'127.0.0.1' if local or host == '0.0.0.0' else host}:{port}/"
    reach = "only this machine can open it (--host 0.0.0.0 shares it)" if local else "other machines can open it"
    print(f"altlearn classroom: serving {url}, bound to {host}: {reach}; Ctrl+C stops it", flush=True)
    if open_browser:
        import webbrowser
        server.io_loop.add_callback(webbrowser.open, url)
    try:
        server.io_loop.start()
    except KeyboardInterrupt:
        print("altlearn classroom: stopped", flush=True)
    finally:
        server.stop()
