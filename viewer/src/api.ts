// The services, called through the gateway's gRPC-Web filter from this page's own origin,
// with the Connect-ES stubs generated from protos/ (src/gen).
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import { readAllBytes, type UniversalClientFn } from "@connectrpc/connect/protocol";
import { createTransport as createUniversalGrpcWebTransport } from "@connectrpc/connect/protocol-grpc-web";
import {
  CaseService,
  type UploadVolumeRequest,
  UploadVolumeRequestSchema,
  type UploadVolumeResponse,
} from "./gen/medseg/cases/v1/cases_pb";

const baseUrl = window.location.origin;

// Unary and server-streaming calls (ListCases, GetCase, WatchCase, SubmitCase).
export const cases = createClient(CaseService, createGrpcWebTransport({ baseUrl, useBinaryFormat: true }));

// UploadVolume is client-streaming. gRPC-Web carries a client stream as the request body's
// sequence of messages, but fetch() cannot stream a request body over HTTP/1.1, so the
// browser transport refuses such calls. This one is the same gRPC-Web protocol with an HTTP
// client that collects the (finite) request stream into one body first: Envoy still hands the
// case service an ordinary client stream, message by message.
const bufferedFetch: UniversalClientFn = async (request) => {
  const body = request.body === undefined ? undefined : await readAllBytes(request.body, Number.MAX_SAFE_INTEGER);
  const response = await fetch(request.url, {
    method: request.method,
    headers: request.header,
    signal: request.signal,
    body: body as BodyInit | undefined,
  });
  return {
    status: response.status,
    header: response.headers,
    trailer: new Headers(),
    body: (async function* () {
      const reader = response.body!.getReader();
      for (;;) {
        const { done, value } = await reader.read();
        if (done) return;
        yield value;
      }
    })(),
  };
};

const uploads = createClient(CaseService, createUniversalGrpcWebTransport({
  httpClient: bufferedFetch,
  baseUrl,
  useBinaryFormat: true,
  interceptors: [],
  acceptCompression: [],
  sendCompression: null,
  compressMinBytes: Number.MAX_SAFE_INTEGER,
  readMaxBytes: 0xffffffff,
  writeMaxBytes: 0xffffffff,
}));

const CHUNK_BYTES = 1 << 20; // ~1 MiB messages, as the Python SDK sends

async function sha256Hex(data: Uint8Array): Promise<string> {
  // crypto.subtle exists only in secure contexts (https, or loopback): elsewhere the upload
  // goes without a declared digest, and the server's answer is what we check against.
  if (!globalThis.crypto?.subtle) return "";
  const digest = await crypto.subtle.digest("SHA-256", data as BufferSource);
  return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("");
}

/** Uploads one NIfTI file (UploadVolume); answers its digest, size and spacing. */
export async function uploadVolume(file: File): Promise<UploadVolumeResponse> {
  const data = new Uint8Array(await file.arrayBuffer());
  const sha256 = await sha256Hex(data);
  const messages: UploadVolumeRequest[] = [
    create(UploadVolumeRequestSchema, { payload: { case: "header", value: { totalBytes: BigInt(data.length), sha256 } } }),
  ];
  for (let start = 0; start < data.length; start += CHUNK_BYTES) {
    messages.push(create(UploadVolumeRequestSchema, { payload: { case: "data", value: data.subarray(start, start + CHUNK_BYTES) } }));
  }
  const reply = await uploads.uploadVolume((async function* () { yield* messages; })());
  if (sha256 && reply.sha256 !== sha256) {
    throw new ConnectError(`the server stored sha256 ${reply.sha256}, the page sent ${sha256}`, Code.DataLoss);
  }
  return reply;
}

/** A call's error as one line for the page. */
export function errorText(err: unknown): string {
  if (err instanceof ConnectError) return `${Code[err.code]}: ${err.rawMessage}`;
  return String(err);
}
