/**
 * Stand-in for ``xmlbuilder2``, which vtk.js's XML mesh reader/writer import (Cornerstone's core
 * pulls the reader in for surface meshes). The real package needs Node's ``events`` and ``url``
 * and throws while the bundle loads in a browser; this viewer shows 2D images and never reads
 * VTK XML meshes, so the one function imported fails only if it is ever called.
 */
export function create(): never {
  throw new Error('VTK XML meshes are not supported by this viewer');
}
