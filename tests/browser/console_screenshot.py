"""Make the README's screenshot of the live console, with live data in it.

    PYTHONPATH=. python -m tests.browser.console_screenshot wsnursery/static/console.png

A server with a tiny history (8 messages per channel), the console subscribed to two
channels, a Python publisher sending about 25 messages a second for 20 seconds; halfway the
page's client loses its connection for two seconds, so the picture shows a reconnect and the
gap the server could not repair. Talks to 127.0.0.1 only.
"""

from __future__ import annotations

import sys

import trio
from playwright.sync_api import sync_playwright

from tests.browser.conftest import FAST_SERVER, TrioThread, find_chromium
from wsnursery.client import sdk
from wsnursery.config import Config
from wsnursery.server import Server


async def publish_steadily(url: str, seconds: float, rate: float) -> None:
    async with sdk.connect(url, encoding="json") as client:
        for n in range(int(seconds * rate)):
            if n % 5 == 0:
                await client.publish("chat.room1", {"user": ["ana", "bo", "cy"][n % 3], "text": f"message {n}"})
            await client.publish("orders", {"order": 1000 + n, "qty": n % 7 + 1, "sku": f"A-{n % 13:02d}"})
            await trio.sleep(1 / rate)


def main(out: str) -> int:
    loop = TrioThread()
    try:
        config = Config(
            **(
                {
                    "host": "127.0.0.1",
                    "port": 0,
                    "log_level": "warning",
                    "history_size": 8,
                    "outbound_queue_size": 8,
                    "max_unacked": 8,
                }
                | FAST_SERVER
            )
        )
        server = Server(config)
        port = loop.start(server.run)[0]
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=find_chromium())
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(f"http://127.0.0.1:{port}/")
            page.click("#connect")
            page.wait_for_selector('#state[data-state="open"]')
            for channel in ("orders", "chat.room1"):
                page.fill("#sub-channel", channel)
                page.click("#subscribe")
                page.wait_for_selector(f'#subscriptions li[data-channel="{channel}"][data-ready="1"]')
            publisher = trio.from_thread.run(_start, loop, f"ws://127.0.0.1:{port}/", trio_token=loop.token)
            page.wait_for_function("() => document.querySelectorAll('#log tr.message').length > 150", timeout=30_000)
            page.fill("#pub-channel", "chat.room1")
            page.fill("#pub-data", '{"user": "console", "text": "hello from the browser"}')
            page.click("#publish")
            page.wait_for_selector("#pub-result:text('seq')")
            # Lose the connection for about two seconds: more than the history is published meanwhile.
            page.click("#clear")  # so the picture shows the loss, the reconnect and the gap
            page.evaluate(
                "() => { const c = window.consoleClient; c.options.backoffBase = 2;"
                " c.options.backoffMax = 2; c.abort(); }"
            )
            page.wait_for_selector("#log tr.gap", timeout=30_000)
            page.evaluate(
                "() => { const c = window.consoleClient; c.options.backoffBase = 0.1; c.options.backoffMax = 5; }"
            )
            page.wait_for_function(
                """() => {  // the newest gap row a few rows down
              let n = 0;
              for (let row = document.querySelector('#log tr.gap'); row.previousElementSibling; n++)
                row = row.previousElementSibling;
              return n >= 2;
            }""",
                timeout=30_000,
                polling=20,
            )
            page.screenshot(path=out)
            trio.from_thread.run(publisher.wait, trio_token=loop.token)
            browser.close()
    finally:
        loop.stop()
    print(f"wrote {out}")
    return 0


async def _start(loop: TrioThread, url: str) -> trio.Event:
    done = trio.Event()

    async def run() -> None:
        await publish_steadily(url, seconds=20, rate=25)
        done.set()

    loop.nursery.start_soon(run)
    return done


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "console.png"))
