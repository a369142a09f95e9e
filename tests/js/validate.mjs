// Validate custom-resource manifests with the validators of the @kubernetes-models packages.
//
// stdin:  a JSON array of manifests.
// stdout: a JSON array with one {index, ok, errors} per manifest, in input order.
// exit:   0 when every manifest was checked (valid or not); 2 when the input is unusable.
//
// Only the kinds in VALIDATORS are known; anything else is reported as invalid (fail closed).
// Error strings name the failing path and rule, never the value found there.

import { readFileSync } from "node:fs";
import { ExternalSecret } from "@kubernetes-models/external-secrets/external-secrets.io/v1/ExternalSecret";
import { SealedSecret } from "@kubernetes-models/sealed-secrets/bitnami.com/v1alpha1/SealedSecret";
import { ApplicationSet } from "@kubernetes-models/argo-cd/argoproj.io/v1alpha1/ApplicationSet";
import { Kustomization } from "@kubernetes-models/flux-cd/kustomize.toolkit.fluxcd.io/v1/Kustomization";
import { GitRepository } from "@kubernetes-models/flux-cd/source.toolkit.fluxcd.io/v1/GitRepository";

const VALIDATORS = new Map(
  [ExternalSecret, SealedSecret, ApplicationSet, Kustomization, GitRepository].map((model) => [
    `${model.apiVersion} ${model.kind}`,
    model,
  ]),
);

function describe(err) {
  const where = err.instancePath || "/";
  let text = `${where} ${err.message ?? err.keyword}`;
  if (err.keyword === "enum" && Array.isArray(err.params?.allowedValues)) {
    text += ` (${err.params.allowedValues.join(", ")})`;
  }
  return text;
}

function check(manifest) {
  if (manifest === null || typeof manifest !== "object" || Array.isArray(manifest)) {
    return ["/ must be an object"];
  }
  const { apiVersion, kind } = manifest;
  const model = VALIDATORS.get(`${apiVersion} ${kind}`);
  if (model === undefined) {
    const known = [...VALIDATORS.keys()].join("; ");
    return [`/ no validator for apiVersion ${JSON.stringify(apiVersion)} kind ${JSON.stringify(kind)} (known: ${known})`];
  }
  try {
    new model(manifest).validate();
    return [];
  } catch (exc) {
    if (Array.isArray(exc?.errors) && exc.errors.length > 0) {
      return exc.errors.map(describe);
    }
    return [`/ validator failed: ${exc?.name ?? "error"}`];
  }
}

let manifests;
try {
  manifests = JSON.parse(readFileSync(0, "utf8"));
} catch (exc) {
  process.stderr.write(`validate.mjs: stdin is not JSON (${exc.name})\n`);
  process.exit(2);
}
if (!Array.isArray(manifests)) {
  process.stderr.write("validate.mjs: stdin must be a JSON array of manifests\n");
  process.exit(2);
}

const results = manifests.map((manifest, index) => {
  const errors = check(manifest);
  return { index, ok: errors.length === 0, errors };
});
process.stdout.write(`${JSON.stringify(results)}\n`);
