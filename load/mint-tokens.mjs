#!/usr/bin/env node
// Mints N access tokens for N fresh user ids, signed exactly as the auth
// function signs them (Ed25519 JWT, alg EdDSA, kid = base64url of the first 12
// bytes of sha256(public key)), so the order function accepts them without a
// single register/login (argon2) round trip. Node's own crypto; no packages.
//
//   node load/mint-tokens.mjs --count 10000 --out load/results/tokens.json [--prefix stampede-RUN] [--ttl 3600]
//
// The key is TOKEN_SIGNING_KEY (base64url 32-byte seed) from the environment,
// else from --secrets FILE (default: .local/secrets.env, what the stack uses).
// Output: {"kid", "public_key", "issued_at", "tokens": [{"user_id","token"}, ...]}.
// Claims: sub, iss (TOKEN_ISSUER, default flashsale-auth), aud (TOKEN_AUDIENCE,
// default flashsale), iat, exp, nbf. 10,000 tokens take well under a second.
import crypto from "node:crypto";
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const args = process.argv.slice(2);
function opt(name, dflt) {
  const i = args.indexOf(`--${name}`);
  return i >= 0 && i + 1 < args.length ? args[i + 1] : dflt;
}
if (args.includes("--help") || args.includes("-h")) {
  console.log(fs.readFileSync(fileURLToPath(import.meta.url), "utf8").split("\n").slice(1, 12).join("\n"));
  process.exit(0);
}

const count = parseInt(opt("count", "10000"), 10);
const out = opt("out", "-");
const prefix = opt("prefix", `load-${Date.now().toString(36)}`);
const ttl = parseInt(opt("ttl", "3600"), 10);
const secretsFile = opt("secrets", path.join(here, "..", ".local", "secrets.env"));
const issuer = process.env.TOKEN_ISSUER || "flashsale-auth";
const audience = process.env.TOKEN_AUDIENCE || "flashsale";

function signingSeed() {
  let seed = process.env.TOKEN_SIGNING_KEY;
  if (!seed && fs.existsSync(secretsFile)) {
    const m = fs.readFileSync(secretsFile, "utf8").match(/^\s*TOKEN_SIGNING_KEY=(\S+)/m);
    if (m) seed = m[1];
  }
  if (!seed) {
    console.error(`mint-tokens: no TOKEN_SIGNING_KEY in the environment nor in ${secretsFile}`);
    process.exit(2);
  }
  const raw = Buffer.from(seed.trim().replace(/=+$/, ""), "base64url");
  if (raw.length !== 32) {
    console.error(`mint-tokens: TOKEN_SIGNING_KEY must decode to 32 bytes, got ${raw.length}`);
    process.exit(2);
  }
  return raw;
}

const b64 = (buf) => Buffer.from(buf).toString("base64url");
const seed = signingSeed();
// PKCS#8 DER for an Ed25519 private key = fixed 16-byte prefix + the 32-byte seed.
const der = Buffer.concat([Buffer.from("302e020100300506032b657004220420", "hex"), seed]);
const privateKey = crypto.createPrivateKey({ key: der, format: "der", type: "pkcs8" });
// SPKI DER of the public key ends with the raw 32 bytes.
const publicRaw = crypto.createPublicKey(privateKey).export({ format: "der", type: "spki" }).subarray(-32);
const kid = b64(crypto.createHash("sha256").update(publicRaw).digest().subarray(0, 12));
const header = b64(JSON.stringify({ alg: "EdDSA", typ: "JWT", kid }));

const started = process.hrtime.bigint();
const now = Math.floor(Date.now() / 1000);
const tokens = new Array(count);
for (let i = 0; i < count; i++) {
  // ULID-like opaque ids are what auth issues; any unique string works for order.
  const userId = `${prefix}-u${String(i).padStart(6, "0")}`;
  const claims = b64(JSON.stringify({ sub: userId, iss: issuer, aud: audience, iat: now, exp: now + ttl, nbf: now }));
  const input = `${header}.${claims}`;
  const sig = crypto.sign(null, Buffer.from(input), privateKey);
  tokens[i] = { user_id: userId, token: `${input}.${b64(sig)}` };
}
const ms = Number(process.hrtime.bigint() - started) / 1e6;
const body = JSON.stringify({ kid, public_key: b64(publicRaw), issued_at: now, expires_at: now + ttl, tokens });
if (out === "-") {
  process.stdout.write(body + "\n");
} else {
  fs.mkdirSync(path.dirname(path.resolve(out)), { recursive: true });
  fs.writeFileSync(out, body);
  console.error(`mint-tokens: ${count} tokens (kid ${kid}, prefix ${prefix}) in ${ms.toFixed(0)} ms -> ${out}`);
}
