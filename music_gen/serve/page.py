"""The web page at ``GET /``: one static file, plain HTML and JavaScript, no build step."""

HTML = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>music-gen</title>
<style>
  body { font-family: system-ui, sans-serif; max-width: 44rem; margin: 2rem auto; padding: 0 1rem; }
  textarea { width: 100%; font: inherit; }
  label { display: inline-block; margin: .5rem 1rem .5rem 0; }
  input[type=number] { width: 5rem; }
  #status { color: #555; min-height: 1.5em; }
  .error { color: #b00020; }
</style>
</head>
<body>
<h1>music-gen</h1>
<p>Model in use: <strong id="model">loading...</strong></p>
<form id="form">
  <label for="prompt">Prompt</label>
  <textarea id="prompt" rows="3" maxlength="1000" placeholder="upbeat jazz with saxophone"></textarea>
  <div>
    <label>Duration (s) <input id="duration" type="number" min="0.1" step="0.1" value="5"></label>
    <label>Guidance <input id="guidance" type="number" min="0" max="100" step="0.5" value="3"></label>
    <label>Seed <input id="seed" type="number" min="0" step="1" placeholder="random"></label>
    <label>API key <input id="key" type="password" autocomplete="off" placeholder="if needed"></label>
    <label>Melody <input id="melody" type="file" accept="audio/*"> (melody models)</label>
  </div>
  <button id="generate" type="submit">Generate</button>
</form>
<p id="status"></p>
<audio id="player" controls></audio>
<p><a id="download" href="#" download="music-gen.wav" hidden>Download</a></p>
<script>
const $ = (id) => document.getElementById(id);
// Routes sit beside the page, whatever the app's route prefix.
const base = location.pathname.endsWith("/") ? location.pathname : location.pathname + "/";
fetch(base + "models").then((r) => r.json()).then((info) => {
  const replica = info.replicas && info.replicas[0];
  const version = replica && replica.name ? ` (${replica.name} v${replica.version})` : "";
  $("model").textContent = (info.default || "none") + version;
}).catch(() => { $("model").textContent = "unknown"; });

$("form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const body = {
    prompt: $("prompt").value,
    duration: parseFloat($("duration").value),
    guidance_scale: parseFloat($("guidance").value),
    format: "wav",
  };
  if ($("seed").value !== "") body.seed = parseInt($("seed").value, 10);
  const melody = $("melody").files[0];
  if (melody) {  // the file's bytes as base64, as the API takes them
    const bytes = new Uint8Array(await melody.arrayBuffer());
    let text = "";
    for (let i = 0; i < bytes.length; i += 32768) text += String.fromCharCode(...bytes.subarray(i, i + 32768));
    body.melody = btoa(text);
  }
  const headers = { "Content-Type": "application/json" };
  if ($("key").value) headers["Authorization"] = "Bearer " + $("key").value;
  $("generate").disabled = true;
  $("status").className = "";
  $("status").textContent = "Generating...";
  try {
    const response = await fetch(base + "generate", { method: "POST", headers, body: JSON.stringify(body) });
    if (!response.ok) {
      const error = await response.json().catch(() => ({ error: response.statusText }));
      throw new Error(error.error || response.statusText);
    }
    const url = URL.createObjectURL(await response.blob());
    $("player").src = url;
    $("download").href = url;
    $("download").hidden = false;
    const seconds = response.headers.get("X-Generation-Seconds");
    $("status").textContent = `Done in ${seconds} s (seed ${response.headers.get("X-Seed")}).`;
  } catch (error) {
    $("status").className = "error";
    $("status").textContent = "Error: " + error.message;
  } finally {
    $("generate").disabled = false;
  }
});
</script>
</body>
</html>
"""
