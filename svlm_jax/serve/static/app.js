// The svlm-jax commentary page: no build step, no dependencies. Protocol: docs/SERVING.md.
"use strict";

const $ = (id) => document.getElementById(id);
let ws = null, session = null, fps = 2, timer = null, stream = null, t0 = 0, objectUrl = null;

// The token comes once, in the URL's fragment (#token=...), which browsers never send to a server.
// It is kept for this tab only and removed from the address bar.
(function takeToken() {
  const m = location.hash.match(/token=([^&]+)/);
  if (m) {
    sessionStorage.setItem("svlm-token", decodeURIComponent(m[1]));
    history.replaceState(null, "", location.pathname + location.search);
  }
  if (!sessionStorage.getItem("svlm-token")) $("token-row").hidden = false;
})();

function token() {
  const typed = $("token").value.trim();
  if (typed) sessionStorage.setItem("svlm-token", typed);
  return sessionStorage.getItem("svlm-token") || "";
}

function setStatus(text) { $("status").textContent = text; }
function showError(text) { $("error").textContent = text; $("error").hidden = !text; }
function fmt(t) { return t.toFixed(0) + "–" + (t + 1).toFixed(0) + " s"; }

function addItem(list, parts, cls) {
  const li = document.createElement("li");
  if (cls) li.className = cls;
  for (const [cls, text] of parts) {
    const span = document.createElement("span");
    span.className = cls;
    span.textContent = text;
    li.appendChild(span);
  }
  $(list).appendChild(li);
  $(list).scrollTop = $(list).scrollHeight;
}

function onMessage(ev) {
  if (typeof ev.data !== "string") {  // a preview frame of a server-side source
    const url = URL.createObjectURL(new Blob([ev.data], { type: "image/jpeg" }));
    const img = $("preview");
    if (img.src) URL.revokeObjectURL(img.src);
    img.src = url;
    img.hidden = false;
    return;
  }
  const m = JSON.parse(ev.data);
  if (m.type === "ready") {
    session = m.session; fps = m.fps;
    // The server's limit, so a question that could never be asked cannot be typed.
    if (m.limits && m.limits.max_question_chars) $("question").maxLength = m.limits.max_question_chars;
    $("session").textContent = session;
    setStatus("live");
    for (const id of ["question", "ask-button", "dl-vtt", "dl-jsonl", "stop"]) $(id).disabled = false;
    if (m.source === "camera") startSending();
    if (m.source === "upload" && objectUrl) { $("video").src = objectUrl; $("video").play(); }
  } else if (m.type === "comment") {
    $("caption").textContent = m.text;  // a silent second clears the caption
    addItem("transcript", [["t", fmt(m.t0)], ["c", m.text || "…"]]);
    $("lag").textContent = m.lag_s == null ? "–" : m.lag_s.toFixed(2) + " s";
    $("step").textContent = m.step_ms.toFixed(0) + " ms";
    $("seconds").textContent = String($("transcript").children.length);
    $("active").textContent = String(m.active);
  } else if (m.type === "answer") {
    addItem("answers", [["t", fmt(m.t0)], ["q", m.question + " → "], ["a", m.text || "(no answer)"]]);
  } else if (m.type === "rejected") {
    addItem("answers", [["t", "not asked"], ["q", m.question + " → "], ["a", m.message]], "rejected");
  } else if (m.type === "skipped") {
    $("skipped").textContent = String(m.total);
  } else if (m.type === "end") {
    setStatus("ended: " + m.seconds + " s commentated, " + m.skipped + " skipped");
  } else if (m.type === "error") {
    showError(m.message + " (" + m.hint + ")");
    setStatus("closed: " + m.code);
  }
}

function startSending() {
  const video = $("video");
  const canvas = document.createElement("canvas");
  const ctx = canvas.getContext("2d");
  t0 = performance.now();
  timer = setInterval(() => {
    if (!ws || ws.readyState !== WebSocket.OPEN || !video.videoWidth) return;
    if (ws.bufferedAmount > 2e6) return;  // the network is behind: drop this frame rather than queue it
    const scale = Math.min(1, 640 / video.videoWidth);
    canvas.width = Math.round(video.videoWidth * scale);
    canvas.height = Math.round(video.videoHeight * scale);
    ctx.drawImage(video, 0, 0, canvas.width, canvas.height);
    const t = (performance.now() - t0) / 1000;
    canvas.toBlob(async (blob) => {
      if (!blob || !ws || ws.readyState !== WebSocket.OPEN) return;
      const jpeg = new Uint8Array(await blob.arrayBuffer());
      const msg = new Uint8Array(8 + jpeg.length);
      new DataView(msg.buffer).setFloat64(0, t, true);
      msg.set(jpeg, 8);
      ws.send(msg);
    }, "image/jpeg", 0.8);
  }, 1000 / fps);
}

function stopSending() {
  if (timer) clearInterval(timer);
  timer = null;
  if (stream) for (const track of stream.getTracks()) track.stop();
  stream = null;
}

async function start(ev) {
  ev.preventDefault();
  showError("");
  const kind = document.querySelector("input[name=source]:checked").value;
  const source = { kind };
  try {
    if (kind === "camera") {
      stream = await navigator.mediaDevices.getUserMedia({ video: true, audio: false });
      $("video").srcObject = stream;
      $("preview").hidden = true;
    } else if (kind === "upload") {
      const file = $("file").files[0];
      if (!file) throw new Error("Choose a video file first.");
      setStatus("uploading…");
      const r = await fetch("/api/upload", { method: "POST", body: file,
                                             headers: { Authorization: "Bearer " + token() } });
      const body = await r.json();
      if (!r.ok) throw new Error(body.message);
      source.id = body.id;
      $("video").srcObject = null;
      objectUrl = URL.createObjectURL(file);
    } else {
      source.url = $("url").value.trim();
      if (!source.url) throw new Error("Type a URL or a path on the server first.");
      $("video").srcObject = null;
    }
  } catch (e) {
    showError(e.message || String(e));
    return;
  }
  for (const id of ["transcript", "answers"]) $(id).replaceChildren();
  $("caption").textContent = "";
  $("skipped").textContent = "0";
  $("start").disabled = true;
  const scheme = location.protocol === "https:" ? "wss://" : "ws://";
  ws = new WebSocket(scheme + location.host + "/ws");
  ws.binaryType = "arraybuffer";
  ws.onopen = () => {
    const query = $("query").value.trim();
    ws.send(JSON.stringify({ type: "start", token: token(), source, ...(query ? { query } : {}) }));
    setStatus("starting…");
  };
  ws.onmessage = onMessage;
  ws.onclose = () => {
    stopSending();
    ws = null;
    $("start").disabled = false;
    for (const id of ["question", "ask-button", "stop"]) $(id).disabled = true;
    if ($("status").textContent === "live") setStatus("disconnected");
  };
}

function ask(ev) {
  ev.preventDefault();
  const text = $("question").value.trim();
  if (!text || !ws) return;
  ws.send(JSON.stringify({ type: "ask", text }));
  addItem("answers", [["t", "asked"], ["q", text]]);
  $("question").value = "";
}

async function download(format) {
  if (!session) return;
  const r = await fetch("/api/sessions/" + session + "/transcript." + format,
                        { headers: { Authorization: "Bearer " + token() } });
  if (!r.ok) { showError((await r.json()).message); return; }
  const a = document.createElement("a");
  a.href = URL.createObjectURL(await r.blob());
  a.download = "session-" + session + "." + format;
  a.click();
  URL.revokeObjectURL(a.href);
}

$("setup").addEventListener("submit", start);
$("stop").addEventListener("click", () => { stopSending(); if (ws) ws.send(JSON.stringify({ type: "stop" })); });
$("ask").addEventListener("submit", ask);
$("dl-vtt").addEventListener("click", () => download("vtt"));
$("dl-jsonl").addEventListener("click", () => download("jsonl"));
