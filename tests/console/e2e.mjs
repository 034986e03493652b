// The strato web console in a real browser: Debian's Chromium, headless,
// driven by playwright-core. Run by tests/console_browser.rs, which starts
// `strato serve`, prepares the data and reads the JSON this prints last.
//
// Environment: STRATO_ENDPOINT, STRATO_AK, STRATO_SK (the admin's keys),
// STRATO_OTHER_BUCKET, STRATO_OTHER_AK, STRATO_OTHER_SK (another user, who
// must see that bucket and none of the admin's),
// STRATO_FILE (the file to upload), STRATO_TRANSFER_KEY (bucket/key of a
// propagation the test keeps in progress), STRATO_SHOTS (screenshot dir),
// CHROMIUM (default /usr/bin/chromium).
import { createHash } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync, existsSync, mkdirSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, basename } from "node:path";

const env = (k) => {
  const v = process.env[k];
  if (!v) { fail(`${k} is not set`); }
  return v;
};
const result = { steps: [] };
function fail(msg) {
  result.ok = false;
  result.error = msg;
  console.log(JSON.stringify(result));
  process.exit(1);
}
function step(name, extra) {
  result.steps.push(name);
  if (extra) Object.assign(result, extra);
  console.error(`e2e: ${name}`);
}
function check(cond, msg) { if (!cond) throw new Error(msg); }

let pw;
try {
  pw = await import("playwright-core");
} catch (e) {
  fail("playwright-core is not installed: run `npm ci --prefix tests/console` (scripts/test.sh does)");
}
const chromiumPath = process.env.CHROMIUM || "/usr/bin/chromium";
if (!existsSync(chromiumPath)) {
  fail(`${chromiumPath} is missing: apt-get install -y --no-install-recommends chromium (scripts/test.sh does)`);
}

const base = env("STRATO_ENDPOINT");
const ak = env("STRATO_AK"), sk = env("STRATO_SK");
const other = env("STRATO_OTHER_BUCKET");
const otherAk = env("STRATO_OTHER_AK"), otherSk = env("STRATO_OTHER_SK");
const newAk = env("STRATO_NEW_AK"), newSk = env("STRATO_NEW_SK");
const file = env("STRATO_FILE");
const transferKey = env("STRATO_TRANSFER_KEY");
const shots = env("STRATO_SHOTS");
mkdirSync(shots, { recursive: true });
const size = statSync(file).size;
const sha = (buf) => createHash("sha256").update(buf).digest("hex");
const fileSha = sha(readFileSync(file));

const profile = mkdtempSync(join(tmpdir(), "strato-chromium-"));
const downloads = mkdtempSync(join(tmpdir(), "strato-downloads-"));
let ctx;
const deadline = setTimeout(() => fail("e2e took longer than 240 s"), 240_000);
try {
  ctx = await pw.chromium.launchPersistentContext(profile, {
    executablePath: chromiumPath,
    headless: true,
    // Without these Chromium reaches for Google's services, and on a closed
    // network those connections stall it.
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync"],
    viewport: { width: 1280, height: 900 },
    acceptDownloads: true,
    downloadsPath: downloads,
  });
  ctx.setDefaultTimeout(60_000);
  const page = ctx.pages()[0] || await ctx.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  page.on("console", (m) => {
    // Refused requests the test provokes are logged as resource failures;
    // the responses themselves are checked below.
    if (m.type() === "error" && !m.text().startsWith("Failed to load resource")) errors.push(m.text());
  });
  const expectedFailures = [/\/ui\/signin$/, /\/ui\/upload\/start\?bucket=anything/, /\/ui\/images\?bucket=browser-images$/];
  page.on("response", (r) => {
    if (r.status() >= 400 && !expectedFailures.some((re) => re.test(r.url()))) {
      errors.push(`${r.status()} from ${r.url()}`);
    }
  });

  // Signed out: the console sends us to sign-in.
  await page.goto(base + "/ui/");
  check(page.url().endsWith("/ui/signin"), `not redirected to sign-in: ${page.url()}`);
  await page.screenshot({ path: join(shots, "signin.png") });

  // A wrong secret is refused; with the keyboard only.
  await page.focus("#access_key");
  await page.keyboard.type(ak);
  await page.keyboard.press("Tab");
  await page.keyboard.type("not-the-secret");
  await page.keyboard.press("Enter");
  await page.waitForSelector("#signin-error");
  check(page.url().endsWith("/ui/signin"), "wrong password not refused");
  step("wrong_password_refused", { wrong_password_refused: true });

  await page.fill("#access_key", ak);
  await page.fill("#secret_key", sk);
  await page.keyboard.press("Enter");
  await page.waitForURL(/\/ui\/images/);
  step("signed_in");

  // The first Tab reaches the skip link: the page is keyboard-usable.
  await page.keyboard.press("Tab");
  const first = await page.evaluate(() => document.activeElement && document.activeElement.className);
  check(first === "skip", `first focus is ${first}`);

  let html = await page.content();
  // The admin sees every bucket, the other user's too.
  check(html.includes(other), `the admin does not see ${other}`);
  check(!html.includes(sk), "the secret key is in the page");

  // A request without the CSRF token is refused.
  const csrfStatus = await page.evaluate(async () => {
    const r = await fetch("/ui/upload/start?bucket=anything&key=x", { method: "POST" });
    return r.status;
  });
  check(csrfStatus === 403, `POST without CSRF token: ${csrfStatus}`);
  step("csrf_refused", { csrf_status: csrfStatus });

  // A bucket, then the upload through the page.
  await page.fill("#new-bucket", "browser-images");
  await page.press("#new-bucket", "Enter");
  await page.waitForURL(/bucket=browser-images/);

  async function upload(key) {
    await page.setInputFiles("#file", file);
    await page.fill("#key", key);
    const t0 = Date.now();
    await page.click("#upload-button");
    await page.waitForFunction(() => {
      const s = document.getElementById("upload-status");
      return s && (s.dataset.newBytes !== undefined || s.className === "error");
    }, null, { timeout: 180_000 });
    const st = await page.$eval("#upload-status", (s) => ({
      text: s.textContent, cls: s.className, newBytes: s.dataset.newBytes, size: s.dataset.size,
    }));
    check(st.cls !== "error", `upload failed: ${st.text}`);
    const progress = await page.$eval("#upload-progress", (p) => p.value);
    check(progress === 1, `progress bar at ${progress}`);
    const row = await page.waitForSelector(`#objects tr[data-key="${key}"]`);
    const figures = await row.evaluate((r) => ({
      size: Number(r.dataset.size), unique: Number(r.dataset.unique), shared: Number(r.dataset.shared),
      text: r.textContent,
    }));
    return { newBytes: Number(st.newBytes), size: Number(st.size), text: st.text, figures, ms: Date.now() - t0 };
  }
  const up1 = await upload("disk-50m.img");
  check(up1.size === size, `uploaded size ${up1.size} != ${size}`);
  check(up1.newBytes === size, `first upload stored ${up1.newBytes} new bytes, not ${size}`);
  check(up1.figures.unique === size && up1.figures.shared === 0,
    `first upload listed as ${JSON.stringify(up1.figures)}`);
  step("first_upload", { first_new_bytes: up1.newBytes, first_listed: up1.figures, first_upload_ms: up1.ms });
  await page.screenshot({ path: join(shots, "images.png"), fullPage: true });

  const up2 = await upload("disk-50m-copy.img");
  check(up2.newBytes === 0, `second upload stored ${up2.newBytes} new bytes`);
  check(up2.text.includes(" 0 B new bytes"), `status says: ${up2.text}`);
  check(up2.figures.shared === size && up2.figures.unique === 0,
    `second upload listed as ${JSON.stringify(up2.figures)}`);
  step("second_upload_zero_new", { second_new_bytes: up2.newBytes, second_listed: up2.figures, second_status: up2.text });
  await page.screenshot({ path: join(shots, "images-dedup.png"), fullPage: true });

  // Download and compare.
  await page.click(`#objects tr[data-key="disk-50m.img"] a`);
  await page.waitForURL(/\/ui\/object/);
  const presigned = await page.$eval("#presigned", (i) => i.value);
  check(presigned.includes("X-Amz-Signature="), "no presigned URL");
  await page.screenshot({ path: join(shots, "object.png"), fullPage: true });
  const [dl] = await Promise.all([page.waitForEvent("download"), page.click("#download")]);
  const saved = join(downloads, "got.img");
  await dl.saveAs(saved);
  const gotSha = sha(readFileSync(saved));
  check(gotSha === fileSha, "downloaded bytes differ from the uploaded file");
  step("download_equal", { download_equal: true, download_bytes: statSync(saved).size });

  // Delete the copy: link, confirmation, gone.
  await page.goto(base + "/ui/object?bucket=browser-images&key=disk-50m-copy.img");
  await page.click("text=Delete…");
  await page.waitForSelector("#confirm-delete");
  await page.screenshot({ path: join(shots, "delete-confirm.png") });
  await page.click("#confirm-delete");
  await page.waitForURL(/\/ui\/images\?bucket=browser-images/);
  html = await page.content();
  check(!html.includes('data-key="disk-50m-copy.img"'), "deleted object still listed");
  check(html.includes('data-key="disk-50m.img"'), "the original is gone too");
  step("deleted", { deleted: true });

  // The running propagation, with progress, updated by polling.
  await page.goto(base + "/ui/transfers");
  const [tb, tk] = transferKey.split("/");
  const row = await page.waitForFunction((key) => {
    for (const r of document.querySelectorAll("#sessions tbody tr")) {
      if (r.dataset.key === key && Number(r.dataset.progress) > 0) {
        return { kind: r.dataset.kind, progress: Number(r.dataset.progress), text: r.textContent };
      }
    }
    return null;
  }, tk, { timeout: 20_000 });
  const transfer = await row.jsonValue();
  check(transfer.text.includes("running"), `propagation not running: ${transfer.text}`);
  step("transfer_visible", { transfer, transfer_bucket: tb });
  await page.screenshot({ path: join(shots, "transfers.png"), fullPage: true });

  await page.goto(base + "/ui/repository");
  const ratio = await page.$eval("#ratio", (e) => e.textContent);
  step("repository", { dedup_ratio_text: ratio });
  await page.screenshot({ path: join(shots, "repository.png"), fullPage: true });
  await page.goto(base + "/ui/health");
  await page.waitForSelector(".chart svg");
  step("health");
  await page.screenshot({ path: join(shots, "health.png"), fullPage: true });

  // A narrow window: nothing wider than the viewport but the tables' own
  // scrolling boxes.
  await page.setViewportSize({ width: 400, height: 800 });
  await page.goto(base + "/ui/images?bucket=browser-images");
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  check(overflow <= 1, `narrow page overflows by ${overflow}px`);
  await page.screenshot({ path: join(shots, "images-narrow.png"), fullPage: true });
  step("narrow_ok");

  // Sign out: back to the sign-in page, and the pages are closed again.
  await page.setViewportSize({ width: 1280, height: 900 });
  await page.click("text=Sign out");
  await page.waitForURL(/\/ui\/signin/);
  await page.goto(base + "/ui/images");
  check(page.url().endsWith("/ui/signin"), "still signed in after sign-out");
  step("signed_out");

  // Another user sees its own bucket and none of the admin's.
  await page.fill("#access_key", otherAk);
  await page.fill("#secret_key", otherSk);
  await page.keyboard.press("Enter");
  await page.waitForURL(/\/ui\/images/);
  html = await page.content();
  check(html.includes(other), `${other} not shown to its owner`);
  for (const b of ["browser-images", tb]) {
    check(!html.includes(b), `the admin's bucket ${b} is visible to another user`);
  }
  check(!html.includes(otherSk), "the other user's secret key is in the page");
  await page.goto(base + "/ui/images?bucket=browser-images");
  check((await page.content()).includes("no bucket"), "the admin's bucket opens for another user");
  await page.goto(base + "/ui/transfers");
  await page.waitForFunction(() => {
    const td = document.querySelector("#sessions tbody td");
    return td && td.textContent === "No sessions yet.";
  }, null, { timeout: 10_000 });
  step("other_bucket_hidden", { other_bucket_hidden: true });

  // A user with nothing yet: sign in, pick a file, upload; the bucket is
  // made on the way and the page shows what the image cost.
  await page.click("text=Sign out");
  await page.waitForURL(/\/ui\/signin/);
  await page.fill("#access_key", newAk);
  await page.fill("#secret_key", newSk);
  await page.keyboard.press("Enter");
  await page.waitForURL(/\/ui\/images/);
  await page.waitForSelector("#upload-bucket");
  await page.screenshot({ path: join(shots, "first-visit.png") });
  const firstBuf = createHash("sha512").update("first").digest();
  const small = Buffer.alloc(3 << 20);
  for (let i = 0; i < small.length; i += firstBuf.length) {
    createHash("sha512").update(String(i)).digest().copy(small, i);
  }
  await page.setInputFiles("#file", { name: "first.img", mimeType: "application/octet-stream", buffer: small });
  await page.click("#upload-button");
  await page.waitForURL(/\/ui\/images\?bucket=images/, { timeout: 60_000 });
  const firstRow = await page.waitForSelector('#objects tr[data-key="first.img"]');
  const firstFig = await firstRow.evaluate((r) => ({ size: Number(r.dataset.size), unique: Number(r.dataset.unique) }));
  check(firstFig.size === small.length && firstFig.unique === small.length,
    `first-visit upload listed as ${JSON.stringify(firstFig)}`);
  step("first_visit_upload", { first_visit_bucket: "images", first_visit_new_bytes: firstFig.unique });

  check(errors.length === 0, `page errors: ${errors.join("; ")}`);
  result.ok = true;
  result.file_bytes = size;
  result.shots = shots;
} catch (e) {
  result.ok = false;
  result.error = String(e && e.stack || e);
} finally {
  clearTimeout(deadline);
  if (ctx) await ctx.close().catch(() => {});
  rmSync(profile, { recursive: true, force: true });
  rmSync(downloads, { recursive: true, force: true });
}
console.log(JSON.stringify(result));
process.exit(result.ok ? 0 : 1);
