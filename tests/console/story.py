"""The web console driven in a real browser (Debian's chromium through Playwright), as a person
would: classify a photo, check and train a generated dataset and watch the job to the end, read the
version, promote it and move an alias, see a bad archive's error codes, give a token; with axe-core
on every page and a phone-sized viewport. Saves a screenshot of each page in --out.

Run by tests/api/console.rs against live servers; exits non-zero with the first failed check.
"""
import argparse
import json
import os
import re
import shutil
import sys
import urllib.request

from playwright.sync_api import expect, sync_playwright

ap = argparse.ArgumentParser()
ap.add_argument("--base", required=True, help="a server without tokens (loopback), bundled model served")
ap.add_argument("--token-base", required=True, help="a server with tokens")
ap.add_argument("--token", required=True)
ap.add_argument("--out", required=True)
ap.add_argument("--flower", required=True)
ap.add_argument("--flower-class", required=True)
ap.add_argument("--dataset", required=True)
ap.add_argument("--recipe", required=True, help="JSON merged over the form's spec (small images)")
ap.add_argument("--epochs", type=int, required=True, help="epochs1 + epochs2 the story trains")
ap.add_argument("--bad", required=True, help="an archive that is not one")
ap.add_argument("--one-class", required=True, help="a dataset with one class")
ap.add_argument("--axe", required=True, help="axe.min.js")
args = ap.parse_args()

os.makedirs(args.out, exist_ok=True)
chromium = os.environ.get("PETAL_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
if not chromium:
    sys.exit("Debian's chromium is not installed (scripts/setup.sh installs it as root: apt-get install chromium)")
AXE = open(args.axe, encoding="utf-8").read()
HOSTILE = "<b>bold</b> & <img src=x onerror=alert(1)> **not bold**"


def api(base, path, token):
    request = urllib.request.Request(base + path, headers={"Authorization": f"Bearer {token}"} if token else {})
    with urllib.request.urlopen(request) as r:
        return json.load(r)


def shot(page, name):
    page.screenshot(path=os.path.join(args.out, f"{name}.png"), full_page=True)


def accessible(page, what):
    """axe-core's WCAG 2 A/AA rules: no serious or critical violation."""
    page.evaluate(AXE)
    result = page.evaluate(
        "async () => await axe.run(document, {runOnly: {type: 'tag', values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa']}})"
    )
    bad = [v for v in result["violations"] if v["impact"] in ("serious", "critical")]
    assert not bad, f"{what}: accessibility violations: " + json.dumps(
        [{"id": v["id"], "impact": v["impact"], "nodes": [n["html"][:160] for n in v["nodes"][:3]]} for v in bad], indent=1
    )


def no_sideways_scroll(page, what):
    over = page.evaluate("() => document.documentElement.scrollWidth - window.innerWidth")
    assert over <= 1, f"{what}: the page is {over}px wider than a phone's viewport"


with sync_playwright() as p:
    browser = p.chromium.launch(
        executable_path=chromium,
        args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
              "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"],
    )
    # bypass_csp: only so that axe-core can be evaluated into the page; the console itself runs
    # under its own Content-Security-Policy in the last part.
    context = browser.new_context(viewport={"width": 1280, "height": 900}, bypass_csp=True)
    context.set_default_timeout(30_000)
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))

    # 1. Try: the bundled model, out of the box.
    page.goto(args.base + "/")
    expect(page.locator("h1")).to_have_text("Try a model")
    expect(page.locator("#try-model")).to_have_value("flowers102")
    page.set_input_files("#try-files", args.flower)
    top = page.locator("#try-results .top-class").first
    expect(top).to_have_text(args.flower_class)
    expect(page.locator("#try-results .timings")).to_contain_text("flowers102 version")
    bars = page.locator("#try-results .preds li")
    assert bars.count() == 5, bars.count()
    accessible(page, "try")
    shot(page, "1-try")
    # The keyboard way: Tab from the last field reaches the file input, Space opens the chooser.
    page.focus("#try-topk")
    page.keyboard.press("Tab")
    assert page.evaluate("() => document.activeElement.id") == "try-files"
    with page.expect_file_chooser(timeout=60_000) as chooser:
        page.keyboard.press("Space")
    chooser.value.set_files([args.flower, args.flower])
    expect(page.locator("#try-results .result")).to_have_count(2)

    # 2. Train: a bad archive, a dataset with one class, then the real one checked and trained.
    page.click("a[data-nav=train]")
    expect(page.locator("h1")).to_have_text("Train a model")
    page.fill("#model-name", "shapes")
    page.set_input_files("#dataset-file", args.bad)
    page.click("#check-button")
    error = page.locator("#check-report .error")
    expect(error).to_have_attribute("data-code", "dataset_archive_invalid")
    expect(error.locator(".code")).to_have_text("dataset_archive_invalid")
    shot(page, "2-train-bad-archive")
    page.set_input_files("#dataset-file", args.one_class)
    page.click("#check-button")
    expect(error).to_have_attribute("data-code", re.compile(r"^dataset_(invalid|layout)$"))
    accessible(page, "train with an error")

    page.set_input_files("#dataset-file", args.dataset)
    page.fill("#dataset-name", HOSTILE)
    page.fill("#dataset-terms", "generated by the test; any use")
    page.select_option("#device", "cpu")
    page.fill("#batch-size", "8")
    page.click("details:has(#extra-spec) > summary")
    page.fill("#extra-spec", args.recipe)
    page.click("#check-button")
    expect(page.locator("#check-ok")).to_be_visible()
    expect(page.locator("#check-classes")).to_have_text("3")
    expect(page.locator("#check-classes-table tbody tr")).to_have_count(3)
    accessible(page, "train, checked")
    shot(page, "3-train-checked")
    page.click("#submit-button")
    page.wait_for_url(re.compile(r"#/jobs/[0-9a-f-]{36}$"))
    job_url = page.url
    expect(page.locator("#job-state")).to_have_text("succeeded", timeout=240_000)
    expect(page.locator("#job-epoch-count")).to_have_text(str(args.epochs))
    for chart in ("accuracy", "loss"):
        line = page.locator(f"svg[data-chart={chart}] polyline[data-series='mobilenet_v2 validation']")
        expect(line).to_have_attribute("data-points", str(args.epochs))
    expect(page.locator("#job-progress")).to_have_attribute("value", "100")
    expect(page.locator("#cancel-job")).to_be_hidden()
    accessible(page, "job")
    shot(page, "4-job-succeeded")

    # 3. The version: evaluation, curves, and a card that shows the hostile name as text.
    page.click("#job-result a >> nth=0")
    expect(page.locator("h1")).to_contain_text("version 1")
    expect(page.locator("#eval-top1")).to_be_visible()
    card = page.locator("#model-card")
    expect(card.locator("h3").first).to_have_text("shapes — version 1")
    expect(card).to_contain_text(HOSTILE.replace("**not bold**", "**not bold**"))
    assert card.locator("b, img, script").count() == 0, "the card rendered markup from user text"
    # The card's links to the version's report and pictures open the console's page of it (the
    # API's paths would need the token).
    expect(card.get_by_role("link", name="confusion matrix (heat map)")).to_have_attribute("href", "#/models/shapes/1")
    expect(page.locator("#pictures img")).to_have_count(2)
    accessible(page, "version")
    shot(page, "5-version")

    # 4. Models: promote the new model (a new alias, If-Match 0), then move the bundled model's
    # production alias to its other version and see it move, with its history.
    page.click("a[data-nav=models]")
    expect(page.locator("#models-table")).to_contain_text("shapes")
    # At a glance: the latest version's accuracy and terms per model, and each version's origin.
    shapes_row = page.locator("#models-table tbody tr", has=page.locator("a:text-is('shapes')"))
    expect(shapes_row.locator("td").nth(3)).to_have_text(re.compile(r"^\d+(\.\d+)? %$"))
    expect(shapes_row).to_contain_text("non-commercial")
    page.click("#models-table a:text-is('shapes')")
    expect(page.locator("#versions-table tr[data-version='1']")).to_contain_text("mobilenet_v2")
    expect(page.locator("#versions-table tr[data-version='1']")).to_contain_text("3 classes")
    page.fill("#promote-alias", "production")
    page.fill("#promote-reason", "first shapes model")
    page.click("#promote-button")
    expect(page.locator("#promote-status")).to_contain_text("production now points to version 1")
    expect(page.locator("tr[data-version='1'] [data-alias=production]")).to_be_visible()
    # The bundled model, as the API describes it (whatever its versions are).
    bundled = api(args.base, "/models/flowers102", None)
    current = bundled["aliases"]["production"]
    other = next(v for v in reversed(bundled["versions"]) if v["version"] != current)
    page.goto(args.base + "/#/models/flowers102")
    expect(page.locator("h1")).to_contain_text("flowers102")
    expect(page.locator("section.alias[data-alias=production] h3")).to_have_text(f"production → version {current}")
    page.select_option("#promote-version", str(other["version"]))
    if other["non_commercial"]:
        expect(page.locator("#promote-terms")).to_contain_text("non-commercial")
    other = other["version"]
    page.fill("#promote-reason", "moved by the console test")
    page.click("#promote-button")
    expect(page.locator("#promote-status")).to_contain_text(f"production now points to version {other}")
    expect(page.locator("section.alias[data-alias=production] h3")).to_have_text(f"production → version {other}")
    expect(page.locator(f"tr[data-version='{other}'] [data-alias=production]")).to_be_visible()
    expect(page.locator("section.alias[data-alias=production] tbody tr").first).to_contain_text("moved by the console test")
    # Compare the two versions: their measures side by side, with B − A.
    page.select_option("#compare-a", str(current))
    page.select_option("#compare-b", str(other))
    page.click("#compare-button")
    rows = page.locator("#compare-table tbody tr")
    expect(rows).to_have_count(5)
    expect(page.locator("#compare-table thead")).to_contain_text(f"Version {current}")
    top1 = page.locator("#compare-table tr[data-measure=top1] td")
    if all("val_top1" in v["metrics"] for v in bundled["versions"]):
        expect(top1.nth(0)).to_contain_text("%")
        expect(top1.nth(1)).to_contain_text("%")
        expect(top1.nth(2)).to_have_text(re.compile(r"^[+−]\d"))
    accessible(page, "model")
    shot(page, "6-models")
    page.goto(job_url)
    expect(page.locator("#job-state")).to_have_text("succeeded")

    # A long job, canceled from its page while it runs.
    page.click("a[data-nav=train]")
    page.fill("#model-name", "long")
    page.set_input_files("#dataset-file", args.dataset)
    page.click("details:has(#extra-spec) > summary")
    long_spec = dict(json.loads(args.recipe), epochs1=500)
    page.fill("#extra-spec", json.dumps(long_spec))
    page.click("#submit-button")
    page.wait_for_url(re.compile(r"#/jobs/[0-9a-f-]{36}$"))
    expect(page.locator("#job-state")).to_have_text("running", timeout=120_000)
    page.click("#cancel-job")
    expect(page.locator("#job-state")).to_have_text("canceled", timeout=120_000)
    expect(page.locator("#job-outcome .error")).to_have_attribute("data-code", "training_canceled")

    # 5. A phone: the pages fit its width.
    phone = browser.new_context(viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True, has_touch=True)
    small = phone.new_page()
    small.on("pageerror", lambda e: errors.append(str(e)))
    small.goto(args.base + "/")
    small.select_option("#try-ref", f"version:{bundled['latest']}")
    small.set_input_files("#try-files", args.flower)
    expect(small.locator("#try-results .top-class").first).to_have_text(args.flower_class)
    no_sideways_scroll(small, "try on a phone")
    small.screenshot(path=os.path.join(args.out, "7-phone-try.png"), full_page=True)
    pages = [("#/train", "#train-form"), ("#/models/flowers102", "#versions-table"),
             (f"#/models/flowers102/{bundled['latest']}", "#model-card h3")]
    for route, ready in pages:
        small.goto(args.base + "/" + route)
        small.wait_for_selector(ready)
        small.wait_for_load_state("networkidle")
        no_sideways_scroll(small, route)
    phone.close()

    # 6. Tokens: the console asks for one, refuses a wrong one, keeps the right one in the tab
    # only — under the console's own Content-Security-Policy this time.
    strict = browser.new_context(viewport={"width": 1280, "height": 900})
    tab = strict.new_page()
    tab.on("pageerror", lambda e: errors.append(str(e)))
    violations = []
    tab.on("console", lambda m: violations.append(m.text) if "Content Security Policy" in m.text else None)
    tab.goto(args.token_base + "/")
    expect(tab.locator("h1")).to_have_text("An API token, please")
    tab.fill("#token-input", "wrong-token")
    tab.press("#token-input", "Enter")
    expect(tab.locator(".error .code")).to_have_text("unauthorized")
    tab.screenshot(path=os.path.join(args.out, "8-token.png"), full_page=True)
    tab.fill("#token-input", args.token)
    tab.press("#token-input", "Enter")
    expect(tab.locator("h1")).to_have_text("Try a model")
    tab.set_input_files("#try-files", args.flower)
    expect(tab.locator("#try-results .top-class").first).to_have_text(args.flower_class)
    # The pictures come through the API with the token too (an <img src> could not send it).
    latest = api(args.token_base, "/models/flowers102", args.token)["latest"]
    manifest = api(args.token_base, f"/models/flowers102/versions/{latest}", args.token)
    pictures = [a["name"] for a in manifest["artifacts"] if a["name"] in ("confusion.png", "curves.png")]
    tab.goto(args.token_base + f"/#/models/flowers102/{latest}")
    expect(tab.locator("#model-card")).to_contain_text(f"flowers102 — version {latest}")
    expect(tab.locator("#pictures img")).to_have_count(len(pictures))
    stored = tab.evaluate("() => [sessionStorage.getItem('petal.token'), localStorage.length, document.cookie]")
    assert stored == [args.token, 0, ""], stored
    # This deployment's use is commercial: moving the alias to a version with non-commercial terms
    # needs the acknowledgement, as the API says.
    tab.goto(args.token_base + "/#/models/flowers102")
    expect(tab.locator("#versions-table")).to_be_visible()
    tab.select_option("#promote-version", str(latest))
    tab.fill("#promote-alias", "console-test")
    restricted = next(v for v in api(args.token_base, "/models/flowers102", args.token)["versions"] if v["version"] == latest)
    if restricted["non_commercial"]:
        tab.click("#promote-button")
        expect(tab.locator("#promote-status .error")).to_have_attribute("data-code", "licence_not_acknowledged")
        tab.check("#promote-ack")
    tab.click("#promote-button")
    expect(tab.locator("#promote-status")).to_contain_text(f"console-test now points to version {latest}")
    expect(tab.locator("section.alias[data-alias=console-test] tbody tr").first).to_contain_text("console")
    tab.click("#forget-token")
    expect(tab.locator("h1")).to_have_text("An API token, please")
    assert not violations, violations
    strict.close()

    assert not errors, f"script errors in the page: {errors}"
    browser.close()

print("console story: every check passed")
