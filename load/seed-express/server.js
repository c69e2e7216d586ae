// A minimal re-implementation of the seed's checkout design, for
// load/bench-compare.sh only (not part of the product):
//   * Express 5, Node `cluster` with one worker per core (os.availableParallelism(),
//     which honours the CPU affinity set by taskset; WORKERS overrides);
//   * the stock gate is Redis DECRBY, given back with INCRBY when it went
//     below zero (sold out) -- two round trips for every sold-out answer;
//   * the order is recorded with one more Redis command (HSET) -- there is no
//     durable ledger (no DynamoDB), which favours this side on the success path;
//   * the bearer token is verified for real as an Ed25519 JWT (node:crypto
//     verify with TOKEN_PUBLIC_KEY, iss/aud/exp checked), like ours.
// Routes: POST /orders {"sale_id","quantity"?} -> 201 order | 409 sold_out | 401;
//         POST /admin/sales {"sale_id","stock"} (sets the stock); GET /healthz.
// Env: PORT (8090), REDIS_URL (redis://127.0.0.1:6379), TOKEN_PUBLIC_KEY
// (base64url 32 bytes; or read from ../../.local/secrets.env), WORKERS.
"use strict";
const cluster = require("node:cluster");
const crypto = require("node:crypto");
const fs = require("node:fs");
const os = require("node:os");
const path = require("node:path");

const PORT = Number(process.env.PORT || 8090);
const WORKERS = Number(process.env.WORKERS || os.availableParallelism());

if (cluster.isPrimary) {
  for (let i = 0; i < WORKERS; i++) cluster.fork();
  cluster.on("exit", (w, code) => console.error(`worker ${w.process.pid} exited (${code})`));
  console.log(`seed-express: ${WORKERS} workers on 127.0.0.1:${PORT}`);
  const stop = () => {
    for (const id in cluster.workers) cluster.workers[id].kill("SIGTERM");
    process.exit(0);
  };
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
} else {
  const express = require("express");
  const Redis = require("ioredis");

  function publicKey() {
    let raw = process.env.TOKEN_PUBLIC_KEY;
    if (!raw) {
      const f = path.join(__dirname, "..", "..", ".local", "secrets.env");
      const m = fs.existsSync(f) && fs.readFileSync(f, "utf8").match(/^\s*TOKEN_PUBLIC_KEY=(\S+)/m);
      if (m) raw = m[1];
    }
    if (!raw) throw new Error("TOKEN_PUBLIC_KEY is not set");
    const bytes = Buffer.from(raw.split(",")[0].trim(), "base64url");
    const der = Buffer.concat([Buffer.from("302a300506032b6570032100", "hex"), bytes]);
    return crypto.createPublicKey({ key: der, format: "der", type: "spki" });
  }
  const key = publicKey();
  const ISS = process.env.TOKEN_ISSUER || "flashsale-auth";
  const AUD = process.env.TOKEN_AUDIENCE || "flashsale";

  function verify(header) {
    if (!header || !header.startsWith("Bearer ")) return null;
    const token = header.slice(7).trim();
    const parts = token.split(".");
    if (parts.length !== 3 || token.length > 2048) return null;
    try {
      const h = JSON.parse(Buffer.from(parts[0], "base64url"));
      if (h.alg !== "EdDSA") return null;
      const ok = crypto.verify(null, Buffer.from(`${parts[0]}.${parts[1]}`), key, Buffer.from(parts[2], "base64url"));
      if (!ok) return null;
      const c = JSON.parse(Buffer.from(parts[1], "base64url"));
      const now = Math.floor(Date.now() / 1000);
      if (c.iss !== ISS || c.aud !== AUD || !(c.exp > now - 30)) return null;
      return c.sub;
    } catch (_) {
      return null;
    }
  }

  const redis = new Redis(process.env.REDIS_URL || "redis://127.0.0.1:6379", { enableAutoPipelining: false });
  const stockKey = (sale) => `fs-seed:{${sale}}:stock`;
  const app = express();
  app.disable("x-powered-by");
  app.disable("etag");
  app.use(express.json({ limit: "16kb" }));

  const err = (res, status, code, message) => res.status(status).json({ error: { code, message } });

  app.post("/orders", async (req, res) => {
    const user = verify(req.get("authorization"));
    if (!user) return err(res, 401, "unauthorized", "missing or invalid access token");
    const { sale_id: sale, quantity = 1 } = req.body || {};
    if (typeof sale !== "string" || !Number.isInteger(quantity) || quantity < 1) {
      return err(res, 400, "invalid_request", "sale_id and a positive quantity");
    }
    try {
      const left = await redis.decrby(stockKey(sale), quantity);
      if (left < 0) {
        await redis.incrby(stockKey(sale), quantity);
        return err(res, 409, "sold_out", "sold out");
      }
      const order = {
        order_id: crypto.randomUUID(),
        sale_id: sale,
        user_id: user,
        quantity,
        status: "confirmed",
        created_at: new Date().toISOString(),
      };
      await redis.hset(`fs-seed:{${sale}}:orders`, order.order_id, JSON.stringify(order));
      return res.status(201).json(order);
    } catch (e) {
      return err(res, 503, "overloaded", String(e));
    }
  });

  app.post("/admin/sales", async (req, res) => {
    const { sale_id: sale, stock } = req.body || {};
    await redis.del(`fs-seed:{${sale}}:orders`);
    await redis.set(stockKey(sale), stock);
    res.status(201).json({ sale_id: sale, stock_total: stock, stock_remaining: stock });
  });

  app.get("/healthz", async (_req, res) => {
    try {
      await redis.ping();
      res.json({ status: "ok" });
    } catch (_) {
      err(res, 503, "unavailable", "redis");
    }
  });

  app.listen(PORT, "127.0.0.1");
}
