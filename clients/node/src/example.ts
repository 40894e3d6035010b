// The medseg contract from Node.js: a health check, Measure inline and MeshMask inline,
// through the Envoy gateway, with stubs generated from protos/ (npm run generate) and
// Connect's gRPC transport (HTTP/2).
//
//   npm ci && npm run generate
//   npx tsx src/example.ts [--gateway 127.0.0.1:8080] [--mask mask.json] [--out-dir DIR]
//
// --mask names a JSON file {"size": [x, y, z], "spacing": [...], "origin": [...],
// "direction": [9 numbers, row-major] (optional), "raw": "mask.raw"} whose raw file holds
// uint8 voxels, x fastest (a NumPy [z, y, x] array's tobytes()). Without it a small demo
// mask is built here. Prints one JSON object: health, measure (labels) and mesh (files with
// their sha256 and size, written into --out-dir when given).
import { createHash } from "node:crypto";
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { parseArgs } from "node:util";

import { create, toJson, type MessageInitShape } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient, type Transport } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";

import {
  Health,
  HealthCheckRequestSchema,
  HealthCheckResponse_ServingStatus,
} from "./gen/grpc/health/v1/health_pb.js";
import {
  MeasureRequestSchema,
  MeasureResultSchema,
  PostprocessService,
} from "./gen/medseg/postprocess/v1/postprocess_pb.js";
import {
  MeshFormat,
  MeshMaskRequestSchema,
  MeshMaskResultSchema,
  SmoothingService,
} from "./gen/medseg/smoothing/v1/smoothing_pb.js";
import { VolumeChunkSchema, VolumeEncoding, VoxelType } from "./gen/medseg/volume/v1/volume_pb.js";

const CHUNK_BYTES = 1 << 20; // data messages of about 1 MiB (8 MiB is the message limit)
const HEALTH_ROUTE_HEADER = "x-medseg-service"; // routes a health check to one service

/** A uint8 label mask: voxels little-endian (1 byte here), x fastest, then y, then z. */
interface Mask {
  size: [number, number, number];
  spacing: [number, number, number];
  origin: [number, number, number];
  direction: number[]; // 3x3 row-major, columns = i, j, k axes in LPS; [] = identity
  voxels: Uint8Array;
}

/** Demo mask: a kidney box with a tumor ball inside, 1 mm voxels. */
function demoMask(): Mask {
  const [sx, sy, sz] = [24, 20, 16];
  const voxels = new Uint8Array(sx * sy * sz);
  for (let k = 0; k < sz; k++)
    for (let j = 0; j < sy; j++)
      for (let i = 0; i < sx; i++) {
        const index = (k * sy + j) * sx + i; // voxel (i, j, k): x fastest
        if (i >= 4 && i < 18 && j >= 4 && j < 15 && k >= 3 && k < 12) voxels[index] = 1; // kidney
        if ((i - 14) ** 2 + (j - 9) ** 2 + (k - 7) ** 2 <= 9) voxels[index] = 2; // tumor
      }
  return { size: [sx, sy, sz], spacing: [1, 1, 1], origin: [0, 0, 0], direction: [], voxels };
}

function readMask(path: string): Mask {
  const spec = JSON.parse(readFileSync(path, "utf8"));
  const voxels = new Uint8Array(readFileSync(resolve(dirname(path), spec.raw)));
  const expected = spec.size[0] * spec.size[1] * spec.size[2];
  if (voxels.length !== expected)
    throw new Error(`${spec.raw}: ${voxels.length} bytes, size ${spec.size} needs ${expected}`);
  return { size: spec.size, spacing: spec.spacing, origin: spec.origin, direction: spec.direction ?? [], voxels };
}

/** The VolumeChunk messages of one inline volume: a header, then the data in chunks. */
function* volumeChunks(role: string, mask: Mask): Generator<MessageInitShape<typeof VolumeChunkSchema>> {
  yield {
    part: {
      case: "header",
      value: {
        role,
        encoding: VolumeEncoding.RAW,
        voxelType: VoxelType.UINT8,
        size: mask.size,
        spacing: mask.spacing,
        origin: mask.origin,
        direction: mask.direction,
        totalBytes: BigInt(mask.voxels.length),
        // Optional: the server checks the voxels against it (DATA_LOSS on a mismatch).
        sha256: createHash("sha256").update(mask.voxels).digest("hex"),
      },
    },
  };
  for (let offset = 0; offset < mask.voxels.length; offset += CHUNK_BYTES)
    yield { part: { case: "data", value: mask.voxels.subarray(offset, offset + CHUNK_BYTES) } };
}

async function health(transport: Transport, service: string, fullName: string): Promise<string> {
  const client = createClient(Health, transport);
  try {
    const reply = await client.check(create(HealthCheckRequestSchema, { service: fullName }), {
      headers: { [HEALTH_ROUTE_HEADER]: service },
      timeoutMs: 5000,
    });
    return HealthCheckResponse_ServingStatus[reply.status];
  } catch (err) {
    const e = ConnectError.from(err);
    return `${Code[e.code]}: ${e.rawMessage}`;
  }
}

async function measure(transport: Transport, mask: Mask) {
  const client = createClient(PostprocessService, transport);
  // Every operation is a bidirectional stream: params first (path left empty = inline), then the volume.
  async function* requests(): AsyncGenerator<MessageInitShape<typeof MeasureRequestSchema>> {
    yield { payload: { case: "params", value: { maskPath: "" } } };
    for (const chunk of volumeChunks("mask", mask)) yield { payload: { case: "chunk", value: chunk } };
  }
  for await (const response of client.measure(requests(), { timeoutMs: 60000 })) {
    if (response.payload.case === "result") return response.payload.value;
  }
  throw new Error("Measure: the stream ended without a result");
}

async function mesh(transport: Transport, mask: Mask, fileStem: string) {
  const client = createClient(SmoothingService, transport);
  async function* requests(): AsyncGenerator<MessageInitShape<typeof MeshMaskRequestSchema>> {
    yield { payload: { case: "params", value: { inline: true, format: MeshFormat.OBJ, fileStem } } };
    for (const chunk of volumeChunks("mask", mask)) yield { payload: { case: "chunk", value: chunk } };
  }
  const files = new Map<string, Buffer[]>();
  for await (const response of client.meshMask(requests(), { timeoutMs: 120000 })) {
    const payload = response.payload;
    if (payload.case === "file") {
      const parts = files.get(payload.value.name) ?? [];
      parts.push(Buffer.from(payload.value.data));
      files.set(payload.value.name, parts);
    } else if (payload.case === "result") {
      return { result: payload.value, files: new Map([...files].map(([n, p]) => [n, Buffer.concat(p)])) };
    }
  }
  throw new Error("MeshMask: the stream ended without a result");
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      gateway: { type: "string", default: process.env.MEDSEG_GATEWAY ?? "127.0.0.1:8080" },
      mask: { type: "string" },
      "out-dir": { type: "string" },
      "file-stem": { type: "string", default: "model" },
    },
  });
  const mask = values.mask ? readMask(values.mask) : demoMask();
  const transport = createGrpcTransport({ baseUrl: `http://${values.gateway}` });

  const out: Record<string, unknown> = {
    health: {
      postprocess: await health(transport, "postprocess", PostprocessService.typeName),
      smoothing: await health(transport, "smoothing", SmoothingService.typeName),
    },
  };
  const measured = await measure(transport, mask);
  out.measure = toJson(MeasureResultSchema, measured);
  const meshed = await mesh(transport, mask, values["file-stem"]!);
  // Each inline file's sha256 is in result.info.sent: check what arrived against it.
  const sent = new Map(meshed.result.info?.sent.map((d) => [d.role, d.sha256]) ?? []);
  const files: Record<string, { bytes: number; sha256: string; verified: boolean }> = {};
  for (const [name, data] of meshed.files) {
    const sha256 = createHash("sha256").update(data).digest("hex");
    files[name] = { bytes: data.length, sha256, verified: sent.get(name) === sha256 };
    if (values["out-dir"]) {
      mkdirSync(values["out-dir"], { recursive: true });
      writeFileSync(join(values["out-dir"], name), data);
    }
  }
  out.mesh = { result: toJson(MeshMaskResultSchema, meshed.result), files };
  process.stdout.write(JSON.stringify(out, null, 2) + "\n");
}

main().catch((err) => {
  const e = err instanceof ConnectError ? err : null;
  console.error(e ? `${Code[e.code]}: ${e.rawMessage}` : err);
  process.exit(2);
});
