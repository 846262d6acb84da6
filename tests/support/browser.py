"""Debian's headless Chromium driven by Selenium through Debian's ChromeDriver, for HMI tests.

Both come from the project's system dependencies (deploy/system-deps.sh installs `chromium` and
`chromium-driver`); nothing is downloaded (Selenium Manager is told to stay offline). Chromium
starts with a fresh profile and without any background networking. `shot()` keeps screenshots
as test artefacts in the test's own tmp folder.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1600,1000",
    "--force-device-scale-factor=1",
)


def available() -> str | None:
    """Why the browser cannot run here (None when it can)."""
    for path in (CHROMIUM, CHROMEDRIVER):
        if not (os.path.exists(path) and os.access(path, os.X_OK)):
            return f"{path} is missing: run deploy/system-deps.sh as root (Debian's chromium and chromium-driver)"
    return None


class Browser:
    def __init__(self, driver: Any, shots: Path) -> None:
        self.driver = driver
        self.shots = shots
        self.taken: list[Path] = []

    def shot(self, name: str) -> Path:
        self.shots.mkdir(parents=True, exist_ok=True)
        path = self.shots / f"{len(self.taken) + 1:02d}-{name}.png"
        self.driver.save_screenshot(str(path))
        self.taken.append(path)
        return path

    def js(self, script: str, *args: Any) -> Any:
        return self.driver.execute_script(script, *args)

    def wait(self, predicate: Callable[[], Any], what: str, timeout_s: float = 30.0, interval_s: float = 0.1) -> Any:
        deadline = time.monotonic() + timeout_s
        last: BaseException | None = None
        while time.monotonic() < deadline:
            try:
                result = predicate()
                if result:
                    return result
            except Exception as exc:  # an element not there yet
                last = exc
            time.sleep(interval_s)
        self.shot("timeout-" + "".join(c if c.isalnum() else "-" for c in what)[:40])
        raise TimeoutError(f"timed out waiting for {what}" + (f" (last error: {last})" if last else ""))

    def find(self, css: str) -> Any:
        from selenium.webdriver.common.by import By

        return self.driver.find_element(By.CSS_SELECTOR, css)

    def finds(self, css: str) -> list[Any]:
        from selenium.webdriver.common.by import By

        return list(self.driver.find_elements(By.CSS_SELECTOR, css))

    def click(self, css: str) -> None:
        self.find(css).click()

    def type(self, css: str, text: str) -> None:
        field = self.find(css)
        field.clear()
        field.send_keys(text)

    def log_in(self, url: str, user: str, password: str) -> None:
        self.driver.get(url)
        self.wait(lambda: self.find("#login-form").is_displayed(), "the login form")
        self.type("#login-user", user)
        self.type("#login-password", password)
        self.click("#login-submit")


@contextlib.contextmanager
def chromium(workdir: Path) -> Iterator[Browser]:
    """A headless Chromium session. ChromeDriver is started here on a free loopback port and
    reached by address (127.0.0.1), so nothing depends on the name `localhost` resolving (a
    minimal root has no /etc/hosts)."""
    import socket
    import subprocess

    from selenium import webdriver

    from hil.broker import free_port

    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager must not try to download anything
    profile = workdir / "chromium-profile"
    shutil.rmtree(profile, ignore_errors=True)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    port = free_port()
    with (workdir / "chromedriver.log").open("ab") as log:
        driver_proc = subprocess.Popen(
            [CHROMEDRIVER, f"--port={port}"],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    driver: Any = None
    try:
        deadline = time.monotonic() + 30.0
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1.0):
                break
            if driver_proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"chromedriver did not listen on 127.0.0.1:{port} (see {workdir}/chromedriver.log)")
            time.sleep(0.1)
        try:
            driver = webdriver.Remote(command_executor=f"http://127.0.0.1:{port}", options=options)
        except Exception as exc:
            tail = (workdir / "chromedriver.log").read_text(errors="replace")[-3000:]
            raise RuntimeError(
                f"Chromium did not start through ChromeDriver: {exc}\nchromedriver.log:\n{tail}"
            ) from exc
        driver.set_page_load_timeout(30)
        yield Browser(driver, workdir / "screenshots")
    finally:
        if driver is not None:
            with contextlib.suppress(Exception):
                driver.quit()
        driver_proc.terminate()
        try:
            driver_proc.wait(10)
        except subprocess.TimeoutExpired:
            driver_proc.kill()
            driver_proc.wait(5)
