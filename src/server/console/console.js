// strato console: the few things HTML cannot do alone. Uploads go in 8 MiB
// parts (File.slice), so the browser never holds the whole file and the
// server streams each part into the store's multipart upload.
"use strict";
(function () {
  const PART = 8 * 1024 * 1024;

  function fmtBytes(n) {
    const u = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    if (n < 1024) return n + " B";
    let v = n, i = 0;
    while (v >= 1024 && i < u.length - 1) { v /= 1024; i++; }
    return (v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : v.toFixed(2)) + " " + u[i];
  }

  function fmtTime(ms) {
    return new Date(ms).toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z");
  }

  async function post(url, csrf, body) {
    const r = await fetch(url, {
      method: "POST", body: body, credentials: "same-origin",
      headers: { "X-CSRF-Token": csrf },
    });
    let j = {};
    try { j = await r.json(); } catch (e) { j = {}; }
    if (!r.ok) throw new Error(j.error || ("HTTP " + r.status));
    return j;
  }

  function setupUpload() {
    const form = document.getElementById("upload");
    if (!form) return;
    const csrf = form.dataset.csrf;
    // No bucket yet: the form names one and the upload makes it.
    const bucketIn = document.getElementById("upload-bucket");
    const file = document.getElementById("file");
    const keyIn = document.getElementById("key");
    const bar = document.getElementById("upload-progress");
    const pct = document.getElementById("upload-percent");
    const status = document.getElementById("upload-status");
    const button = document.getElementById("upload-button");
    form.addEventListener("submit", async function (ev) {
      ev.preventDefault();
      const f = file.files[0];
      if (!f) { status.textContent = "Choose a file first."; return; }
      const key = keyIn.value.trim() || f.name;
      const bucket = form.dataset.bucket || bucketIn.value.trim();
      button.disabled = true;
      delete status.dataset.newBytes;
      status.className = "";
      status.textContent = "Uploading " + key + "…";
      bar.value = 0; pct.textContent = "0%";
      const q = (o) => Object.keys(o).map((k) => k + "=" + encodeURIComponent(o[k])).join("&");
      let upload = null;
      try {
        const start = { bucket: bucket, key: key };
        if (bucketIn) start.create = "1";
        upload = (await post("/ui/upload/start?" + q(start), csrf, "")).upload;
        const parts = Math.max(1, Math.ceil(f.size / PART));
        let done = 0;
        for (let i = 0; i < parts; i++) {
          const slice = f.slice(i * PART, Math.min(f.size, (i + 1) * PART));
          await post("/ui/upload/part?" + q({ upload: upload, part: i + 1 }), csrf, slice);
          done += slice.size;
          const frac = f.size ? done / f.size : 1;
          bar.value = frac;
          pct.textContent = Math.floor(frac * 100) + "%";
        }
        const r = await post("/ui/upload/complete?" + q({ upload: upload }), csrf, "");
        bar.value = 1; pct.textContent = "100%";
        status.dataset.newBytes = r.new_bytes;
        status.dataset.size = r.size;
        status.dataset.key = r.key;
        status.textContent = "Uploaded " + r.key + ": " + fmtBytes(r.size) + ", " +
          fmtBytes(r.new_bytes) + " new bytes stored (" + r.new_bytes + " bytes), " +
          fmtBytes(r.shared_bytes) + " shared with other objects.";
        if (bucketIn) {
          status.textContent += " Opening the bucket…";
          location.assign("/ui/images?bucket=" + encodeURIComponent(bucket));
          return;
        }
        await refreshObjects();
      } catch (e) {
        status.className = "error";
        status.textContent = "Upload failed: " + e.message;
        if (upload) { post("/ui/upload/abort?" + q({ upload: upload }), csrf, "").catch(() => {}); }
      } finally {
        button.disabled = false;
      }
    });
  }

  async function refreshObjects() {
    const r = await fetch(location.href, { credentials: "same-origin" });
    if (!r.ok) return;
    const doc = new DOMParser().parseFromString(await r.text(), "text/html");
    const fresh = doc.getElementById("objects");
    const old = document.getElementById("objects");
    if (fresh && old) old.replaceWith(fresh);
  }

  function cell(tr, text, cls) {
    const td = document.createElement("td");
    if (cls) td.className = cls;
    td.textContent = text;
    tr.appendChild(td);
    return td;
  }

  function setupTransfers() {
    const table = document.getElementById("sessions");
    if (!table) return;
    const src = table.dataset.src;
    async function tick() {
      let j;
      try {
        const r = await fetch(src, { credentials: "same-origin" });
        if (!r.ok) return;
        j = await r.json();
      } catch (e) { return; }
      document.getElementById("rate-have").textContent = j.have_ids_per_s.toFixed(0) + " ids/s";
      document.getElementById("rate-get").textContent = fmtBytes(Math.round(j.get_bytes_per_s)) + "/s";
      document.getElementById("rate-put").textContent = fmtBytes(Math.round(j.put_bytes_per_s)) + "/s";
      document.getElementById("rate-claim").textContent = j.claim_ids_per_s.toFixed(0) + " ids/s";
      const body = document.createElement("tbody");
      if (!j.sessions.length) {
        const tr = body.insertRow();
        const td = cell(tr, "No sessions yet.");
        td.colSpan = 8;
      }
      for (const s of j.sessions) {
        const tr = body.insertRow();
        tr.dataset.kind = s.kind;
        tr.dataset.progress = s.progress;
        tr.dataset.key = s.key;
        cell(tr, s.kind);
        cell(tr, s.bucket + "/" + s.key);
        cell(tr, s.audience || "–");
        cell(tr, s.user);
        cell(tr, fmtTime(s.started_ms));
        cell(tr, fmtBytes(s.served_bytes) + " / " + fmtBytes(s.total_bytes), "n");
        const td = cell(tr, "");
        const p = document.createElement("progress");
        p.max = 1; p.value = s.progress;
        p.setAttribute("aria-label", "progress of " + s.key);
        td.appendChild(p);
        td.appendChild(document.createTextNode(" " + Math.floor(s.progress * 100) + "%"));
        if (s.outcome) {
          const ok = s.outcome.nodes.filter((n) => n.ok).length;
          cell(tr, "ended: " + ok + "/" + s.outcome.nodes.length + " nodes ok");
          // Per node, as the sender reported it (text only, never HTML).
          const nr = body.insertRow();
          nr.className = "nodes";
          const nd = cell(nr, "");
          nd.colSpan = 8;
          const ul = document.createElement("ul");
          ul.className = "node-outcomes";
          for (const n of s.outcome.nodes) {
            const li = document.createElement("li");
            li.dataset.ok = String(n.ok);
            li.textContent = n.node + ": " + (n.ok ? "ok" : "failed" + (n.reason ? " (" + n.reason + ")" : "")) +
              ", " + fmtBytes(n.bytes_received) + " in " + n.seconds.toFixed(2) + " s";
            ul.appendChild(li);
          }
          nd.appendChild(ul);
        } else {
          cell(tr, s.running ? "running" : (s.progress >= 1 ? "done" : "idle"));
        }
      }
      table.tBodies[0].replaceWith(body);
      const groups = document.getElementById("groups");
      const gb = document.createElement("tbody");
      if (!j.groups.length) { const td = cell(gb.insertRow(), "No claims seen."); td.colSpan = 4; }
      for (const g of j.groups) {
        const tr = gb.insertRow();
        cell(tr, g.group);
        cell(tr, String(g.claim_requests), "n");
        cell(tr, String(g.ids_asked), "n");
        cell(tr, fmtTime(g.last_ms));
      }
      groups.tBodies[0].replaceWith(gb);
      table.dataset.updated = String(j.time_ms);
    }
    tick();
    setInterval(tick, 2000);
  }

  function setupHealth() {
    const el = document.getElementById("health");
    if (!el) return;
    setInterval(async function () {
      try {
        const r = await fetch(el.dataset.refresh, { credentials: "same-origin" });
        if (!r.ok) return;
        const doc = new DOMParser().parseFromString(await r.text(), "text/html");
        const fresh = doc.getElementById("health");
        const cur = document.getElementById("health");
        if (fresh && cur) cur.replaceWith(fresh);
      } catch (e) { /* the next tick tries again */ }
    }, 10000);
  }

  function setupCopy() {
    for (const b of document.querySelectorAll("button[data-copy]")) {
      b.addEventListener("click", async function () {
        const input = document.getElementById(b.dataset.copy);
        const note = b.parentElement.querySelector(".copied");
        input.select();
        try {
          await navigator.clipboard.writeText(input.value);
          if (note) note.textContent = "Copied.";
        } catch (e) {
          if (note) note.textContent = "Selected: press Ctrl+C to copy.";
        }
      });
    }
  }

  document.addEventListener("DOMContentLoaded", function () {
    setupUpload();
    setupTransfers();
    setupHealth();
    setupCopy();
  });
})();
