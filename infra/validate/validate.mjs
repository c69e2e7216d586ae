#!/usr/bin/env node
// Schema validation of rendered Kubernetes / Knative manifests, offline.
//
//   node validate.mjs FILE.yaml [FILE.yaml ...]   validate every document
//   node validate.mjs --self-test                 prove the validator rejects bad input
//
// Each document is loaded into the matching model class of the npm packages
// `kubernetes-models` (Kubernetes' published OpenAPI schemas) and
// `@kubernetes-models/knative` (schemas generated from Knative's Go API types),
// and that model's .validate() is called. A kind with no model is an error, not
// a skip: a manifest we cannot check is a manifest we do not ship.
//
// Known gap: these schemas do not forbid unknown fields, so a misspelt field
// name passes here; policy.mjs checks Knative Service fields against the set
// Knative's webhook accepts.
import { readFileSync, realpathSync } from "node:fs";
import { pathToFileURL } from "node:url";
import { parseAllDocuments } from "yaml";

/** "serving.knative.dev/v1" + "Service" -> module specifier of its model. */
export function modelModule(apiVersion, kind) {
  if (typeof apiVersion !== "string" || typeof kind !== "string" || !apiVersion || !kind) {
    throw new Error("document has no apiVersion/kind");
  }
  const parts = apiVersion.split("/");
  if (parts.length === 1) return `kubernetes-models/${parts[0]}/${kind}`; // core group: v1
  const [group, version] = parts;
  if (group === "knative.dev" || group.endsWith(".knative.dev")) {
    return `@kubernetes-models/knative/${group}/${version}/${kind}`;
  }
  return `kubernetes-models/${group}/${version}/${kind}`;
}

/** Validate one parsed object. Returns [] when valid, else error strings. */
export async function validateObject(obj) {
  if (obj === null || typeof obj !== "object" || Array.isArray(obj)) {
    return ["document is not a mapping"];
  }
  let spec;
  try {
    spec = modelModule(obj.apiVersion, obj.kind);
  } catch (e) {
    return [e.message];
  }
  let mod;
  try {
    mod = await import(spec);
  } catch {
    return [`no schema model for ${obj.apiVersion} ${obj.kind} (looked for ${spec})`];
  }
  const Model = mod[obj.kind];
  if (typeof Model !== "function") {
    return [`module ${spec} does not export ${obj.kind}`];
  }
  try {
    new Model(obj).validate();
    return [];
  } catch (e) {
    const detail = Array.isArray(e?.errors)
      ? e.errors.map((x) => `${x.instancePath || "/"} ${x.message}`).join("; ")
      : String(e?.message ?? e);
    return [detail];
  }
}

function describe(obj) {
  const ns = obj?.metadata?.namespace ? `${obj.metadata.namespace}/` : "";
  return `${obj?.apiVersion ?? "?"} ${obj?.kind ?? "?"} ${ns}${obj?.metadata?.name ?? "?"}`;
}

export function loadYamlDocs(file) {
  const text = readFileSync(file, "utf8");
  const docs = [];
  for (const d of parseAllDocuments(text)) {
    if (d.errors.length) throw new Error(`${file}: YAML error: ${d.errors[0].message}`);
    const js = d.toJS();
    if (js !== null && js !== undefined) docs.push(js);
  }
  return docs;
}

async function validateFiles(files) {
  let failures = 0;
  let count = 0;
  for (const file of files) {
    const docs = loadYamlDocs(file);
    if (docs.length === 0) {
      console.error(`FAIL ${file}: no documents`);
      failures++;
      continue;
    }
    for (const obj of docs) {
      count++;
      const errs = await validateObject(obj);
      if (errs.length) {
        failures++;
        console.error(`FAIL ${describe(obj)}: ${errs.join("; ")}`);
      } else {
        console.log(`  ok  ${describe(obj)}`);
      }
    }
  }
  console.log(`schema: ${count - failures} valid, ${failures} invalid (${files.join(", ")})`);
  return failures === 0;
}

// ---------------------------------------------------------------- self-test
// A known-good Knative Service must pass, and each broken variant must fail:
// if the schemas stopped being applied (package change, wrong model lookup),
// the variants would pass and this self-test fails the run.
function goodKsvc() {
  return {
    apiVersion: "serving.knative.dev/v1",
    kind: "Service",
    metadata: { name: "selftest", namespace: "flashsale" },
    spec: {
      template: {
        metadata: { annotations: { "autoscaling.knative.dev/min-scale": "0" } },
        spec: {
          containerConcurrency: 4,
          timeoutSeconds: 30,
          containers: [
            {
              name: "app",
              image: "dev.local/flashsale/auth:0.1.0",
              readinessProbe: { httpGet: { path: "/healthz", port: 8080 } },
              resources: { requests: { cpu: "250m", memory: "64Mi" } },
            },
          ],
        },
      },
    },
  };
}

async function selfTest() {
  const cases = [
    ["containerConcurrency as a string", (s) => { s.spec.template.spec.containerConcurrency = "four"; }],
    ["timeoutSeconds as a string", (s) => { s.spec.template.spec.timeoutSeconds = "30s"; }],
    ["containers is not a list", (s) => { s.spec.template.spec.containers = { name: "app" }; }],
    ["cpu request is a boolean", (s) => { s.spec.template.spec.containers[0].resources.requests.cpu = true; }],
    ["annotation value is a number", (s) => { s.spec.template.metadata.annotations["autoscaling.knative.dev/min-scale"] = 0; }],
  ];
  let ok = true;
  const good = await validateObject(goodKsvc());
  if (good.length) {
    console.error(`SELF-TEST FAIL: the known-good Knative Service was rejected: ${good.join("; ")}`);
    ok = false;
  } else {
    console.log("  ok  known-good Knative Service accepted");
  }
  for (const [name, mutate] of cases) {
    const s = goodKsvc();
    mutate(s);
    const errs = await validateObject(s);
    if (errs.length === 0) {
      console.error(`SELF-TEST FAIL: broken Knative Service accepted (${name})`);
      ok = false;
    } else {
      console.log(`  ok  broken Knative Service rejected (${name}): ${errs[0].slice(0, 100)}`);
    }
  }
  // Core kinds go through kubernetes-models: a Deployment with replicas "one".
  const dep = {
    apiVersion: "apps/v1",
    kind: "Deployment",
    metadata: { name: "selftest" },
    spec: {
      replicas: "one",
      selector: { matchLabels: { a: "b" } },
      template: { metadata: { labels: { a: "b" } }, spec: { containers: [{ name: "c", image: "x:1" }] } },
    },
  };
  const depErrs = await validateObject(dep);
  if (depErrs.length === 0) {
    console.error("SELF-TEST FAIL: Deployment with replicas: \"one\" accepted");
    ok = false;
  } else {
    console.log(`  ok  broken Deployment rejected: ${depErrs[0].slice(0, 100)}`);
  }
  const unknown = await validateObject({ apiVersion: "example.com/v1", kind: "Widget", metadata: { name: "w" } });
  if (unknown.length === 0) {
    console.error("SELF-TEST FAIL: a kind without a schema model was accepted");
    ok = false;
  } else {
    console.log("  ok  kind without a schema model rejected");
  }
  console.log(`schema self-test: ${ok ? "passed" : "FAILED"}`);
  return ok;
}

async function main(argv) {
  if (argv.length === 0) {
    console.error("usage: node validate.mjs FILE.yaml... | --self-test");
    return 2;
  }
  if (argv[0] === "--self-test") return (await selfTest()) ? 0 : 1;
  try {
    return (await validateFiles(argv)) ? 0 : 1;
  } catch (e) {
    console.error(`FAIL ${e.message}`);
    return 1;
  }
}

if (process.argv[1] && import.meta.url === pathToFileURL(realpathSync(process.argv[1])).href) {
  process.exitCode = await main(process.argv.slice(2));
}
