// The README's "From any language" Node example (fetch, no SDK), run against a real gateway
// by tests/e2e/http/test_http_api.py: VQ_URL and VQ_KEY say where and who.
const api = (path, init = {}) => fetch(`${process.env.VQ_URL}${path}`, {...init,
  headers: {Authorization: `Bearer ${process.env.VQ_KEY}`, "Content-Type": "application/json",
            ...init.headers}}).then(async r => {
  const body = await r.json();
  if (!r.ok) throw new Error(`${r.status} ${body.error.param ?? ""}: ${body.error.message}`);
  return body;
});
let video = await api("/v1/videos", {method: "POST",
  body: JSON.stringify({model: "sora", prompt: "A cat playing piano", size: "64x48", duration: 1})});
while (video.status === "queued" || video.status === "in_progress") {
  await new Promise(r => setTimeout(r, 200));
  video = await api(`/v1/videos/${video.id}`);
}
const file = await fetch(video.video.url);  // signed: no key
const bytes = (await file.arrayBuffer()).byteLength;
let error = null;
try {
  await api("/v1/videos", {method: "POST", body: JSON.stringify({prompt: "x", size: "huge"})});
} catch (e) {
  error = e.message;
}
console.log(JSON.stringify({id: video.id, status: video.status, bytes,
                            type: file.headers.get("content-type"), error}));
