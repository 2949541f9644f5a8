// A .jpw reader for the browser (docs/format.md), and a forward pass for `sequential`
// architectures: the page runs a model from its JPEG weights with the browser's own JPEG decoder.
// Nothing decoded is used before the SHA-256 matches. Anything this reader does not know is a
// JpwError naming it, and the page falls back to the server.
"use strict";

const JPW = (() => {
  class JpwError extends Error {}
  const SIZES = { F64: 8, F32: 4, F16: 2, BF16: 2, I64: 8, I32: 4, I16: 2, I8: 1, U8: 1, BOOL: 1 };
  const MAX_HEADER = 16 << 20;
  const prod = (shape) => shape.reduce((a, b) => a * b, 1);

  async function sha256(...parts) {
    const all = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
    let at = 0;
    for (const p of parts) { all.set(p, at); at += p.length; }
    const d = new Uint8Array(await crypto.subtle.digest("SHA-256", all));
    return Array.from(d, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  // One zlib stream (RFC 1950), padded with up to 7 zero bytes (format.md, "Packed container").
  async function inflate(bytes) {
    for (let pad = 0; pad <= 7 && pad < bytes.length; pad++) {
      if (pad && bytes[bytes.length - pad] !== 0) break;
      try {
        const stream = new Blob([bytes.subarray(0, bytes.length - pad)]).stream().pipeThrough(new DecompressionStream("deflate"));
        return new Uint8Array(await new Response(stream).arrayBuffer());
      } catch { /* trailing padding: try without one more byte */ }
    }
    throw new JpwError("the packed index is not a zlib stream");
  }

  // Stored tensors: {name: {dtype, shape, bytes}}, checked to tile `data` exactly.
  function stored(entries, data) {
    const out = {};
    const spans = [];
    for (const [name, e] of Object.entries(entries)) {
      if (!(e.dtype in SIZES) || !Array.isArray(e.shape) || !Array.isArray(e.data_offsets)) throw new JpwError(`stored tensor ${name} is malformed`);
      const [begin, end] = e.data_offsets;
      if (end - begin !== prod(e.shape) * SIZES[e.dtype]) throw new JpwError(`stored tensor ${name}: its size does not match its shape`);
      spans.push([begin, end]);
      out[name] = { dtype: e.dtype, shape: e.shape, bytes: data.subarray(begin, end) };
    }
    spans.sort((a, b) => a[0] - b[0]);
    let at = 0;
    for (const [begin, end] of spans) { if (begin !== at) throw new JpwError("stored tensors do not tile the data section"); at = end; }
    if (at !== data.length) throw new JpwError("stored tensors do not tile the data section");
    return out;
  }

  function floats(t, what) {
    const n = prod(t.shape), v = new DataView(t.bytes.buffer, t.bytes.byteOffset, t.bytes.byteLength), out = new Float32Array(n);
    if (t.dtype === "F32") for (let i = 0; i < n; i++) out[i] = v.getFloat32(i * 4, true);
    else if (t.dtype === "F16") for (let i = 0; i < n; i++) out[i] = half(v.getUint16(i * 2, true));
    else if (t.dtype === "U8") out.set(t.bytes);
    else throw new JpwError(`${what}: this page reads F32, F16 and U8 tensors, not ${t.dtype}`);
    return out;
  }

  function half(h) {
    const s = h & 0x8000 ? -1 : 1, e = (h >> 10) & 31, f = h & 1023;
    if (e === 0) return s * f * 2 ** -24;
    if (e === 31) return f ? NaN : s * Infinity;
    return s * (1 + f / 1024) * 2 ** (e - 15);
  }

  // An atlas's grey levels, decoded by the browser: no colour management, one channel.
  async function atlasPixels(bytes, width, height) {
    const bitmap = await createImageBitmap(new Blob([bytes], { type: "image/jpeg" }), { colorSpaceConversion: "none", premultiplyAlpha: "none" });
    if (bitmap.width !== width || bitmap.height !== height) throw new JpwError(`an atlas decodes to ${bitmap.width}x${bitmap.height}, not ${width}x${height}`);
    const canvas = new OffscreenCanvas(width, height);
    const ctx = canvas.getContext("2d", { willReadFrequently: true, colorSpace: "srgb" });
    ctx.drawImage(bitmap, 0, 0);
    bitmap.close();
    const rgba = ctx.getImageData(0, 0, width, height).data, out = new Uint8Array(width * height);
    for (let i = 0; i < out.length; i++) out[i] = rgba[i * 4];
    return out;
  }

  function ranged(q, rows, cols, scale, offset) {
    const out = new Float32Array(rows * cols);
    for (let r = 0; r < rows; r++) {
      const s = scale[scale.length === 1 ? 0 : r], o = offset[offset.length === 1 ? 0 : r];
      for (let c = 0; c < cols; c++) out[r * cols + c] = Math.fround(o + Math.fround(s * q[r * cols + c]));
    }
    return out;
  }

  async function entry(name, e, tensors, used) {
    const take = (key) => {
      if (!(key in tensors) || used.has(key)) throw new JpwError(`${name}: stored tensor ${key} is missing or used twice`);
      used.add(key);
      return tensors[key];
    };
    if (e.dtype !== "F32") throw new JpwError(`${name}: this page runs F32 tensors, not ${e.dtype}`);
    const rows = e.shape.length ? e.shape[0] : 1, cols = e.shape.length ? prod(e.shape) / Math.max(rows, 1) : 1;
    if (e.coding === "raw") return floats(take(e.key), name);
    if (e.coding !== "int8" && e.coding !== "jpeg") throw new JpwError(`${name}: this page does not know the coding ${JSON.stringify(e.coding)}`);
    const scale = floats(take(e.scale), name), offset = floats(take(e.offset), name);
    let q;
    if (e.coding === "int8") {
      q = take(e.key).bytes;
    } else {
      q = new Uint8Array(rows * cols);
      for (const a of e.atlases) {
        const stream = take(a.key).bytes;
        // a decompression bomb is refused before the browser decodes it (format.md: 1,024 pixels a byte)
        if (!(a.width * a.height <= 1024 * stream.length + (1 << 20))) throw new JpwError(`${name}: an atlas claims more pixels than its bytes can code`);
        const px = await atlasPixels(stream, a.width, a.height);
        if (e.layout === "matrix") {
          for (let y = 0; y < a.height; y++) q.set(px.subarray(y * a.width, (y + 1) * a.width), (a.row + y) * cols + a.col);
        } else if (e.layout === "rows") {
          const [h, w] = e.tile, gw = a.grid[1];
          for (let i = 0; i < a.count; i++) {
            const gy = Math.floor(i / gw) * h, gx = (i % gw) * w, row = a.first + i;
            for (let y = 0; y < h; y++) q.set(px.subarray((gy + y) * a.width + gx, (gy + y) * a.width + gx + w), row * cols + y * w);
          }
        } else {
          throw new JpwError(`${name}: this page does not know the layout ${JSON.stringify(e.layout)}`);
        }
      }
    }
    const out = ranged(q, rows, cols, scale, offset);
    if (e.outliers) {
      const at = new Int32Array(take(e.outliers).bytes.slice().buffer), values = floats(take(e.outlier_values), name);
      at.forEach((p, i) => { out[p] = values[i]; });
    }
    return out;
  }

  // A package's bytes -> {manifest, state: {name: {shape, data: Float32Array}}}.
  async function read(buffer) {
    const bytes = new Uint8Array(buffer);
    if (bytes.length < 8) throw new JpwError("the package is truncated");
    const n = Number(new DataView(buffer).getBigUint64(0, true));
    if (n > MAX_HEADER || 8 + n > bytes.length) throw new JpwError("the package's header is too large or truncated");
    let header;
    try { header = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(bytes.subarray(8, 8 + n))); } catch { throw new JpwError("the package's header is not JSON"); }
    const meta = header.__metadata__ || {};
    delete header.__metadata__;
    const data = bytes.subarray(8 + n);
    const tensors = stored(header, data);
    let manifest, digest;
    if (meta["jpegweights.packed"] === "zlib") {
      digest = await sha256(data);
      if (digest !== meta["jpegweights.sha256"]) throw new JpwError("the package's SHA-256 does not match: it is corrupt");
      const index = JSON.parse(new TextDecoder().decode(await inflate(tensors["jpegweights/index"].bytes)));
      manifest = index.manifest;
      const packed = tensors["jpegweights/data"].bytes;
      Object.assign(tensors, stored(index.tensors, packed));
      delete tensors["jpegweights/index"];
      delete tensors["jpegweights/data"];
    } else {
      const text = meta.jpegweights;
      if (typeof text !== "string") throw new JpwError("the package has no jpegweights manifest");
      digest = await sha256(new TextEncoder().encode(text), data);
      if (digest !== meta["jpegweights.sha256"]) throw new JpwError("the package's SHA-256 does not match: it is corrupt");
      manifest = JSON.parse(text);
    }
    if (manifest.format !== "jpegweights" || ![2, 3, 4].includes(manifest.version)) throw new JpwError(`this page reads format versions 2 to 4, not ${manifest.version}`);
    const state = {}, used = new Set();
    for (const [name, e] of Object.entries(manifest.tensors)) state[name] = { shape: e.shape, data: await entry(name, e, tensors, used) };
    if (used.size !== Object.keys(tensors).length) throw new JpwError("the package stores tensors no entry uses");
    return { manifest, state, digest };
  }

  // ---- the forward pass of a `sequential` architecture (the MNIST models' layers)

  function linear(x, w, b, inF, outF) {
    const out = new Float32Array(outF);
    for (let o = 0; o < outF; o++) {
      let s = b ? b[o] : 0;
      const row = o * inF;
      for (let i = 0; i < inF; i++) s += w[row + i] * x[i];
      out[o] = s;
    }
    return out;
  }

  function conv(x, [c, h, wd], w, b, outC, k, pad) {
    const oh = h + 2 * pad - k + 1, ow = wd + 2 * pad - k + 1, out = new Float32Array(outC * oh * ow);
    for (let o = 0; o < outC; o++) for (let y = 0; y < oh; y++) for (let xx = 0; xx < ow; xx++) {
      let s = b ? b[o] : 0;
      for (let i = 0; i < c; i++) for (let ky = 0; ky < k; ky++) {
        const iy = y + ky - pad;
        if (iy < 0 || iy >= h) continue;
        for (let kx = 0; kx < k; kx++) {
          const ix = xx + kx - pad;
          if (ix >= 0 && ix < wd) s += w[((o * c + i) * k + ky) * k + kx] * x[(i * h + iy) * wd + ix];
        }
      }
      out[(o * oh + y) * ow + xx] = s;
    }
    return [out, [outC, oh, ow]];
  }

  function maxpool(x, [c, h, w], k) {
    const oh = Math.floor(h / k), ow = Math.floor(w / k), out = new Float32Array(c * oh * ow);
    for (let i = 0; i < c; i++) for (let y = 0; y < oh; y++) for (let xx = 0; xx < ow; xx++) {
      let m = -Infinity;
      for (let dy = 0; dy < k; dy++) for (let dx = 0; dx < k; dx++) m = Math.max(m, x[(i * h + y * k + dy) * w + xx * k + dx]);
      out[(i * oh + y) * ow + xx] = m;
    }
    return [out, [c, oh, ow]];
  }

  const int = (v) => (Array.isArray(v) ? v[0] : v);

  // A model the page can run, or a JpwError saying why not (the page then asks the server).
  function sequential(manifest, state) {
    const arch = manifest.architecture || {};
    if (!Array.isArray(arch.layers)) throw new JpwError("this page runs `sequential` architectures only");
    const known = { Flatten: 1, Linear: 1, ReLU: 1, Conv2d: 1, MaxPool2d: 1 };
    arch.layers.forEach((l, i) => {
      if (!known[l.type]) throw new JpwError(`layer ${i} is ${l.type}, which this page cannot run`);
      if (l.type === "Conv2d" && (int(l.stride ?? 1) !== 1 || (l.groups ?? 1) !== 1 || int(l.dilation ?? 1) !== 1 || typeof int(l.padding ?? 0) !== "number")) throw new JpwError(`layer ${i}: this page runs plain convolutions only`);
      if (l.type === "MaxPool2d" && int(l.stride ?? l.kernel_size) !== int(l.kernel_size)) throw new JpwError(`layer ${i}: this page runs pooling with its kernel's stride only`);
    });
    const pre = arch.preprocess || {}, scale = pre.scale ?? 1, mean = (pre.mean || [0])[0], std = (pre.std || [1])[0];
    return (pixels) => { // 0..255, one channel, row-major -> probabilities
      let x = Float32Array.from(pixels, (p) => (p * scale - mean) / std), shape = arch.input_shape.slice();
      arch.layers.forEach((l, i) => {
        const w = state[`${i}.weight`]?.data, b = state[`${i}.bias`]?.data;
        if (l.type === "Flatten") shape = [x.length];
        else if (l.type === "ReLU") x = x.map((v) => Math.max(v, 0));
        else if (l.type === "Linear") { x = linear(x, w, b, l.in_features, l.out_features); shape = [l.out_features]; }
        else if (l.type === "Conv2d") [x, shape] = conv(x, shape, w, b, l.out_channels, int(l.kernel_size), int(l.padding ?? 0));
        else [x, shape] = maxpool(x, shape, int(l.kernel_size));
      });
      const m = Math.max(...x), e = Array.from(x, (v) => Math.exp(v - m)), z = e.reduce((a, v) => a + v, 0);
      return e.map((v) => v / z);
    };
  }

  return { JpwError, read, sequential, atlasPixels };
})();
