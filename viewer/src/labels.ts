// The label convention, read from the contract (protos/medseg/volume/v1/volume.proto): the
// enum Label's values carry their names and colours as options, exactly as
// python/medseg/labels.py reads them, so both sides share the one table.
import { getOption } from "@bufbuild/protobuf";
import { label_color, label_name, LabelSchema } from "./gen/medseg/volume/v1/volume_pb";

export interface LabelInfo {
  value: number;
  name: string;
  color: string; // "#rrggbb"
  rgb: [number, number, number];
}

function rgb(hex: string): [number, number, number] {
  const n = Number.parseInt(hex.slice(1), 16);
  return [(n >> 16) & 255, (n >> 8) & 255, n & 255];
}

// value -> label, background (0) included.
export const LABELS: Map<number, LabelInfo> = new Map(
  LabelSchema.values.map((v) => {
    const color = getOption(v, label_color);
    return [v.number, { value: v.number, name: getOption(v, label_name), color, rgb: rgb(color) }];
  }),
);

export const STRUCTURES: LabelInfo[] = [...LABELS.values()].filter((l) => l.value !== 0);

export function labelByName(name: string): LabelInfo | undefined {
  return STRUCTURES.find((l) => l.name === name);
}
