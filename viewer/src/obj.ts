// Splits the case's model.obj (smoothing_svc: one `o <structure>` per label, global 1-based
// `v`/`vn` indices, `f a//a b//b c//c`) into one triangle mesh per structure, in NiiVue's
// world space (RAS mm): the header names the file's system, and LPS flips x and y.

export interface StructureMesh {
  name: string;
  points: Float32Array; // x, y, z per vertex
  triangles: Uint32Array; // 0-based within this mesh
}

export function parseObj(text: string): StructureMesh[] {
  const lps = /^#\s*coordinates:\s*LPS/m.test(text);
  const sign = lps ? -1 : 1;
  const meshes: StructureMesh[] = [];
  let name = "";
  let points: number[] = [];
  let triangles: number[] = [];
  let first = 1; // global index of this object's first vertex
  let seen = 0; // vertices before this object
  const finish = () => {
    if (name && triangles.length) {
      meshes.push({ name, points: Float32Array.from(points), triangles: Uint32Array.from(triangles) });
    }
  };
  for (const line of text.split("\n")) {
    const tag = line.slice(0, 2);
    if (tag === "v ") {
      const [, x, y, z] = line.trim().split(/\s+/);
      points.push(sign * Number(x), sign * Number(y), Number(z));
    } else if (tag === "f ") {
      const corners = line.trim().split(/\s+/).slice(1).map((c) => Number.parseInt(c, 10) - first);
      for (let i = 1; i + 1 < corners.length; i++) triangles.push(corners[0], corners[i], corners[i + 1]);
    } else if (tag === "o ") {
      finish();
      seen += points.length / 3;
      first = seen + 1;
      name = line.slice(2).trim();
      points = [];
      triangles = [];
    }
  }
  finish();
  return meshes;
}
