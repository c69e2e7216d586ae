#!/usr/bin/env node
// Deployment policy for the flash-sale manifests: what the schemas cannot say.
//
//   node policy.mjs --repo ROOT --sources DIR... --rendered FILE...
//   node policy.mjs --self-test
//
// Rendered manifests (output of `kubectl kustomize knative/`):
//   KSVC_MIN_SCALE      every Knative Service scales to zero: min-scale "0"
//   KSVC_MAX_SCALE      ... and has a max-scale (a positive integer)
//   KSVC_AUTOSCALING    ... names its metric (concurrency|rps) and a positive target;
//                       autoscaling.knative.dev/* keys are ones Knative knows
//   KSVC_CONCURRENCY    ... sets containerConcurrency
//   KSVC_TIMEOUT        ... sets timeoutSeconds (1..600)
//   KSVC_PROBE          ... has a readinessProbe on GET /healthz
//   KSVC_FIELDS         ... uses only pod/container fields Knative's webhook accepts
//   KSVC_NONROOT        ... runs as non-root
//   RESOURCES           every container of every workload sets cpu+memory requests and a memory limit
//   IMAGE_TAG           every image has a tag or digest, and the tag is not "latest"
//   IMAGE_VERSION       dev.local/flashsale/* images carry the workspace version (Cargo.toml)
//                       and imagePullPolicy IfNotPresent|Never (they are side-loaded, not pulled)
//   SECRET_IN_ENV       secret-looking env vars come from a Secret (secretKeyRef), never inline
//   CONFIGMAP_SECRET    no secret-looking key in a ConfigMap
//   SECRET_ORIGIN       every rendered Secret comes from a secretGenerator
// Committed sources (the directories given with --sources):
//   SOURCE_SECRET       no Secret object in any committed YAML file
//   GENERATOR_LITERALS  secretGenerator reads env files only (no literals:, no files:)
//   GENERATOR_ENV       those env files are gitignored and untracked
//   VERSION_DRIFT       infra/deploy.just's default image version matches Cargo.toml
import { execFileSync } from "node:child_process";
import { existsSync, mkdtempSync, mkdirSync, readdirSync, readFileSync, realpathSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, relative } from "node:path";
import { pathToFileURL } from "node:url";
import { parseAllDocuments } from "yaml";

const SECRETISH = /(SECRET|PASSWORD|PASSWD|SIGNING_KEY|PRIVATE_KEY|ADMIN_TOKEN|API_KEY)/i;

// Knative Serving's field masks (pkg/apis/serving/fieldmask.go): the pod and
// container fields a Revision accepts without feature flags. The kind install
// turns no feature flags on, so gated fields (affinity, tolerations, pod
// securityContext, initContainers, ...) are refused here too.
const KSVC_POD_FIELDS = new Set([
  "containers", "volumes", "serviceAccountName", "imagePullSecrets", "enableServiceLinks",
  "containerConcurrency", "timeoutSeconds", "responseStartTimeoutSeconds", "idleTimeoutSeconds",
]);
const KSVC_CONTAINER_FIELDS = new Set([
  "name", "args", "command", "env", "workingDir", "envFrom", "image", "imagePullPolicy",
  "livenessProbe", "readinessProbe", "startupProbe", "ports", "resources", "securityContext",
  "terminationMessagePath", "terminationMessagePolicy", "volumeMounts",
]);
const AUTOSCALING_KEYS = new Set([
  "class", "metric", "target", "target-utilization-percentage", "min-scale", "max-scale",
  "initial-scale", "activation-scale", "scale-down-delay", "window", "panic-window-percentage",
  "panic-threshold-percentage", "scale-to-zero-pod-retention-period", "metric-aggregation-algorithm",
]);

const isKsvc = (o) => o?.kind === "Service" && o?.apiVersion === "serving.knative.dev/v1";
const nameOf = (o) => `${o?.kind ?? "?"} ${o?.metadata?.namespace ? o.metadata.namespace + "/" : ""}${o?.metadata?.name ?? "?"}`;

/** Pod spec of any workload we ship, or null. */
function podSpecOf(o) {
  if (isKsvc(o)) return o.spec?.template?.spec ?? null;
  switch (o?.kind) {
    case "Pod": return o.spec ?? null;
    case "Deployment": case "StatefulSet": case "DaemonSet": case "ReplicaSet": case "Job":
      return o.spec?.template?.spec ?? null;
    case "CronJob": return o.spec?.jobTemplate?.spec?.template?.spec ?? null;
    default: return null;
  }
}

function containersOf(spec) {
  return [...(spec?.initContainers ?? []), ...(spec?.containers ?? [])];
}

/** "repo/name:tag@sha256:..." -> {tag, digest}; tag is after the last ':' past the last '/'. */
export function parseImage(image) {
  let rest = image;
  let digest = null;
  const at = rest.indexOf("@");
  if (at >= 0) { digest = rest.slice(at + 1); rest = rest.slice(0, at); }
  const slash = rest.lastIndexOf("/");
  const colon = rest.lastIndexOf(":");
  const tag = colon > slash ? rest.slice(colon + 1) : null;
  const repo = colon > slash ? rest.slice(0, colon) : rest;
  return { repo, tag, digest };
}

/** Checks over rendered manifests. `generated` = names of secretGenerator Secrets. */
export function checkRendered(docs, { version = null, generated = new Set() } = {}) {
  const v = [];
  const add = (rule, obj, msg) => v.push({ rule, where: nameOf(obj), msg });

  for (const o of docs) {
    if (!o || typeof o !== "object") continue;

    if (isKsvc(o)) {
      const ann = o.spec?.template?.metadata?.annotations ?? {};
      const spec = o.spec?.template?.spec ?? {};
      const A = (k) => ann[`autoscaling.knative.dev/${k}`];
      if (A("min-scale") !== "0") add("KSVC_MIN_SCALE", o, `autoscaling.knative.dev/min-scale must be "0", is ${JSON.stringify(A("min-scale"))}`);
      if (!(typeof A("max-scale") === "string" && /^[1-9][0-9]*$/.test(A("max-scale")))) {
        add("KSVC_MAX_SCALE", o, `autoscaling.knative.dev/max-scale must be a positive integer string, is ${JSON.stringify(A("max-scale"))}`);
      }
      if (!["concurrency", "rps"].includes(A("metric"))) add("KSVC_AUTOSCALING", o, `autoscaling.knative.dev/metric must be concurrency or rps, is ${JSON.stringify(A("metric"))}`);
      if (!(typeof A("target") === "string" && Number(A("target")) > 0)) add("KSVC_AUTOSCALING", o, `autoscaling.knative.dev/target must be a positive number string, is ${JSON.stringify(A("target"))}`);
      for (const k of Object.keys(ann)) {
        if (k.startsWith("autoscaling.knative.dev/") && !AUTOSCALING_KEYS.has(k.slice("autoscaling.knative.dev/".length))) {
          add("KSVC_AUTOSCALING", o, `unknown annotation ${k}`);
        }
      }
      if (!Number.isInteger(spec.containerConcurrency) || spec.containerConcurrency < 0) add("KSVC_CONCURRENCY", o, "spec.template.spec.containerConcurrency must be set (integer >= 0)");
      if (!Number.isInteger(spec.timeoutSeconds) || spec.timeoutSeconds < 1 || spec.timeoutSeconds > 600) add("KSVC_TIMEOUT", o, "spec.template.spec.timeoutSeconds must be set (1..600)");
      for (const k of Object.keys(spec)) if (!KSVC_POD_FIELDS.has(k)) add("KSVC_FIELDS", o, `pod field "${k}" is not accepted by Knative (without a feature flag)`);
      const cs = spec.containers ?? [];
      if (cs.length === 0) add("KSVC_FIELDS", o, "no containers");
      for (const c of cs) {
        for (const k of Object.keys(c)) if (!KSVC_CONTAINER_FIELDS.has(k)) add("KSVC_FIELDS", o, `container ${c.name}: field "${k}" is not accepted by Knative`);
        if (c.readinessProbe?.httpGet?.path !== "/healthz") add("KSVC_PROBE", o, `container ${c.name ?? "?"}: readinessProbe httpGet /healthz missing`);
        if (c.securityContext?.runAsNonRoot !== true) add("KSVC_NONROOT", o, `container ${c.name ?? "?"}: securityContext.runAsNonRoot must be true`);
      }
    }

    const pod = podSpecOf(o);
    if (pod) {
      for (const c of containersOf(pod)) {
        const r = c.resources ?? {};
        if (!r.requests?.cpu || !r.requests?.memory || !r.limits?.memory) {
          add("RESOURCES", o, `container ${c.name ?? "?"}: needs resources.requests.cpu, requests.memory and limits.memory`);
        }
        if (typeof c.image !== "string" || !c.image) {
          add("IMAGE_TAG", o, `container ${c.name ?? "?"}: no image`);
        } else {
          const { repo, tag, digest } = parseImage(c.image);
          if (!tag && !digest) add("IMAGE_TAG", o, `container ${c.name}: image ${c.image} has no tag`);
          if (tag === "latest") add("IMAGE_TAG", o, `container ${c.name}: image ${c.image} uses :latest`);
          if (repo.startsWith("dev.local/flashsale/")) {
            if (version && tag !== version) add("IMAGE_VERSION", o, `container ${c.name}: image ${c.image} is not the workspace version ${version}`);
            if (!["IfNotPresent", "Never"].includes(c.imagePullPolicy)) add("IMAGE_VERSION", o, `container ${c.name}: side-loaded image needs imagePullPolicy IfNotPresent (is ${c.imagePullPolicy ?? "unset"})`);
          }
        }
        for (const e of c.env ?? []) {
          if (SECRETISH.test(e.name ?? "") && !e.valueFrom?.secretKeyRef) {
            add("SECRET_IN_ENV", o, `container ${c.name}: env ${e.name} must come from a Secret (valueFrom.secretKeyRef)`);
          }
        }
      }
    }

    if (o.kind === "ConfigMap" && o.apiVersion === "v1") {
      for (const k of Object.keys({ ...(o.data ?? {}), ...(o.binaryData ?? {}) })) {
        if (SECRETISH.test(k)) add("CONFIGMAP_SECRET", o, `key ${k} looks like a secret; put it in the Secret`);
      }
    }
    if (o.kind === "Secret" && o.apiVersion === "v1" && !generated.has(o.metadata?.name)) {
      add("SECRET_ORIGIN", o, "Secret does not come from a secretGenerator in the committed kustomizations");
    }
  }
  return v;
}

function yamlFilesUnder(dir) {
  const out = [];
  if (!existsSync(dir)) return out;
  for (const ent of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, ent.name);
    if (ent.isDirectory()) {
      if (ent.name !== "node_modules" && !ent.name.startsWith(".")) out.push(...yamlFilesUnder(p));
    } else if (/\.ya?ml$/.test(ent.name)) {
      out.push(p);
    }
  }
  return out;
}

function gitIgnoredAndUntracked(repo, file) {
  const rel = relative(repo, file);
  let ignored = false;
  try {
    execFileSync("git", ["-C", repo, "check-ignore", "-q", "--no-index", rel], { stdio: "ignore" });
    ignored = true;
  } catch { ignored = false; }
  let tracked = false;
  try {
    execFileSync("git", ["-C", repo, "ls-files", "--error-unmatch", rel], { stdio: "ignore" });
    tracked = true;
  } catch { tracked = false; }
  return { ignored, tracked };
}

/** Checks over committed source files. Returns {violations, generated}. */
export function checkSources(repo, dirs) {
  const v = [];
  const generated = new Set();
  for (const dir of dirs) {
    for (const file of yamlFilesUnder(join(repo, dir))) {
      const where = relative(repo, file);
      let docs;
      try {
        docs = parseAllDocuments(readFileSync(file, "utf8")).map((d) => d.toJS());
      } catch (e) {
        v.push({ rule: "SOURCE_SECRET", where, msg: `cannot parse: ${e.message}` });
        continue;
      }
      for (const o of docs) {
        if (!o || typeof o !== "object") continue;
        if (o.kind === "Secret") {
          v.push({ rule: "SOURCE_SECRET", where, msg: `committed Secret ${o.metadata?.name ?? "?"}: use the secretGenerator with a gitignored env file` });
        }
        if (o.kind === "Kustomization" || /(^|\/)kustomization\.ya?ml$/.test(file)) {
          for (const g of o.secretGenerator ?? []) {
            if (g.literals?.length || g.files?.length) {
              v.push({ rule: "GENERATOR_LITERALS", where, msg: `secretGenerator ${g.name}: literals/files are not allowed, use envs: with a gitignored file` });
            }
            if (!g.envs?.length && !g.env) {
              v.push({ rule: "GENERATOR_LITERALS", where, msg: `secretGenerator ${g.name}: has no env file` });
            }
            for (const env of [...(g.envs ?? []), ...(g.env ? [g.env] : [])]) {
              const { ignored, tracked } = gitIgnoredAndUntracked(repo, join(dirname(file), env));
              if (!ignored || tracked) {
                v.push({ rule: "GENERATOR_ENV", where, msg: `secretGenerator ${g.name}: ${env} must be gitignored and untracked (ignored=${ignored}, tracked=${tracked})` });
              }
            }
            if (g.name) generated.add(g.name);
          }
          for (const g of o.configMapGenerator ?? []) {
            for (const lit of g.literals ?? []) {
              if (SECRETISH.test(String(lit).split("=")[0])) {
                v.push({ rule: "GENERATOR_LITERALS", where, msg: `configMapGenerator ${g.name}: literal ${String(lit).split("=")[0]} looks like a secret` });
              }
            }
          }
        }
      }
    }
  }
  return { violations: v, generated };
}

export function workspaceVersion(repo) {
  const p = join(repo, "Cargo.toml");
  if (!existsSync(p)) return null;
  const m = readFileSync(p, "utf8").match(/^\[workspace\.package\][^[]*?^version\s*=\s*"([^"]+)"/m);
  return m ? m[1] : null;
}

export function checkVersionDrift(repo, version) {
  const p = join(repo, "infra", "deploy.just");
  if (!version || !existsSync(p)) return [];
  const m = readFileSync(p, "utf8").match(/env_var_or_default\(\s*"FLASHSALE_VERSION"\s*,\s*"([^"]+)"\s*\)/);
  if (!m) return [{ rule: "VERSION_DRIFT", where: "infra/deploy.just", msg: "no FLASHSALE_VERSION default found" }];
  if (m[1] !== version) return [{ rule: "VERSION_DRIFT", where: "infra/deploy.just", msg: `default image version ${m[1]} != Cargo.toml workspace version ${version}` }];
  return [];
}

function loadDocs(file) {
  return parseAllDocuments(readFileSync(file, "utf8")).map((d) => d.toJS()).filter((x) => x != null);
}

function report(violations) {
  for (const x of violations) console.error(`FAIL [${x.rule}] ${x.where}: ${x.msg}`);
}

// ---------------------------------------------------------------- self-test
function badKsvc() {
  return {
    apiVersion: "serving.knative.dev/v1", kind: "Service",
    metadata: { name: "bad", namespace: "flashsale" },
    spec: { template: {
      metadata: { annotations: { "autoscaling.knative.dev/min-scale": "1", "autoscaling.knative.dev/maxScale": "5" } },
      spec: {
        initContainers: [{ name: "init", image: "busybox" }],
        containers: [{
          name: "app", image: "dev.local/flashsale/auth:latest", lifecycle: {},
          env: [{ name: "ADMIN_TOKEN", value: "hunter2" }],
        }],
      },
    } },
  };
}

function runSelfTest() {
  let ok = true;
  const expectRules = (label, got, want) => {
    const fired = new Set(got.map((x) => x.rule));
    const missing = want.filter((r) => !fired.has(r));
    if (missing.length) {
      ok = false;
      console.error(`SELF-TEST FAIL (${label}): rules did not fire: ${missing.join(", ")}`);
    } else {
      console.log(`  ok  ${label}: ${want.join(", ")} all fired (${got.length} violations)`);
    }
  };

  const bad = [
    badKsvc(),
    { apiVersion: "v1", kind: "ConfigMap", metadata: { name: "cfg" }, data: { TOKEN_SIGNING_KEY: "x" } },
    { apiVersion: "v1", kind: "Secret", metadata: { name: "inline" }, stringData: { ADMIN_TOKEN: "x" } },
    { apiVersion: "apps/v1", kind: "Deployment", metadata: { name: "d" }, spec: { template: { spec: { containers: [{ name: "c", image: "redis" }] } } } },
  ];
  expectRules("broken rendered manifests", checkRendered(bad, { version: "0.1.0" }), [
    "KSVC_MIN_SCALE", "KSVC_MAX_SCALE", "KSVC_AUTOSCALING", "KSVC_CONCURRENCY", "KSVC_TIMEOUT",
    "KSVC_PROBE", "KSVC_FIELDS", "KSVC_NONROOT", "RESOURCES", "IMAGE_TAG", "IMAGE_VERSION",
    "SECRET_IN_ENV", "CONFIGMAP_SECRET", "SECRET_ORIGIN",
  ]);

  const good = {
    apiVersion: "serving.knative.dev/v1", kind: "Service", metadata: { name: "good" },
    spec: { template: {
      metadata: { annotations: {
        "autoscaling.knative.dev/min-scale": "0", "autoscaling.knative.dev/max-scale": "5",
        "autoscaling.knative.dev/metric": "concurrency", "autoscaling.knative.dev/target": "100",
      } },
      spec: { containerConcurrency: 0, timeoutSeconds: 10, containers: [{
        name: "app", image: "dev.local/flashsale/stock:0.1.0", imagePullPolicy: "IfNotPresent",
        readinessProbe: { httpGet: { path: "/healthz", port: 8080 } },
        resources: { requests: { cpu: "250m", memory: "64Mi" }, limits: { memory: "128Mi" } },
        securityContext: { runAsNonRoot: true },
        env: [{ name: "ADMIN_TOKEN", valueFrom: { secretKeyRef: { name: "s", key: "ADMIN_TOKEN" } } }],
      }] },
    } },
  };
  const goodV = checkRendered([good], { version: "0.1.0" });
  if (goodV.length) { ok = false; report(goodV); console.error("SELF-TEST FAIL: a compliant Knative Service was flagged"); }
  else console.log("  ok  compliant Knative Service passes");

  // A throwaway git repo with a committed Secret, a literal secretGenerator
  // and a secretGenerator env file that is not gitignored.
  const tmp = mkdtempSync(join(tmpdir(), "policy-selftest-"));
  try {
    mkdirSync(join(tmp, "k"));
    writeFileSync(join(tmp, "k", "secret.yaml"), "apiVersion: v1\nkind: Secret\nmetadata:\n  name: oops\nstringData:\n  ADMIN_TOKEN: hunter2\n");
    writeFileSync(join(tmp, "k", "kustomization.yaml"),
      "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nsecretGenerator:\n" +
      "  - name: lit\n    literals: [ADMIN_TOKEN=hunter2]\n  - name: fromenv\n    envs: [secrets.env]\n");
    writeFileSync(join(tmp, "k", "secrets.env"), "ADMIN_TOKEN=hunter2\n");
    execFileSync("git", ["init", "-q", tmp], { stdio: "ignore" });
    expectRules("broken committed sources", checkSources(tmp, ["k"]).violations, ["SOURCE_SECRET", "GENERATOR_LITERALS", "GENERATOR_ENV"]);
    writeFileSync(join(tmp, "Cargo.toml"), '[workspace.package]\nversion = "9.9.9"\n');
    mkdirSync(join(tmp, "infra"));
    writeFileSync(join(tmp, "infra", "deploy.just"), 'v := env_var_or_default("FLASHSALE_VERSION", "0.1.0")\n');
    expectRules("version drift", checkVersionDrift(tmp, workspaceVersion(tmp)), ["VERSION_DRIFT"]);
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
  console.log(`policy self-test: ${ok ? "passed" : "FAILED"}`);
  return ok;
}

function parseArgs(argv) {
  const a = { repo: process.cwd(), sources: [], rendered: [], selfTest: false };
  let cur = null;
  for (const x of argv) {
    if (x === "--self-test") a.selfTest = true;
    else if (x === "--repo") cur = "repo";
    else if (x === "--sources") cur = "sources";
    else if (x === "--rendered") cur = "rendered";
    else if (cur === "repo") { a.repo = x; cur = null; }
    else if (cur) a[cur].push(x);
    else throw new Error(`unexpected argument ${x}`);
  }
  return a;
}

function main(argv) {
  const a = parseArgs(argv);
  if (a.selfTest) return runSelfTest() ? 0 : 1;
  if (a.rendered.length === 0) { console.error("usage: node policy.mjs --repo ROOT --sources DIR... --rendered FILE... | --self-test"); return 2; }
  const version = workspaceVersion(a.repo);
  const src = checkSources(a.repo, a.sources);
  const docs = a.rendered.flatMap(loadDocs);
  const violations = [
    ...src.violations,
    ...checkVersionDrift(a.repo, version),
    ...checkRendered(docs, { version, generated: src.generated }),
  ];
  report(violations);
  const ksvcs = docs.filter(isKsvc).map((o) => o.metadata?.name);
  console.log(`policy: ${docs.length} rendered objects (Knative Services: ${ksvcs.join(", ") || "none"}), ` +
    `sources: ${a.sources.join(", ") || "none"}, workspace version ${version ?? "unknown"}: ` +
    `${violations.length} violation(s)`);
  if (!ksvcs.length) { console.error("FAIL: no Knative Service in the rendered output"); return 1; }
  return violations.length ? 1 : 0;
}

if (process.argv[1] && import.meta.url === pathToFileURL(realpathSync(process.argv[1])).href) {
  try {
    process.exitCode = main(process.argv.slice(2));
  } catch (e) {
    console.error(`FAIL ${e.message}`);
    process.exitCode = 1;
  }
}

