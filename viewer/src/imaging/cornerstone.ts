/**
 * Cornerstone3D set-up: the rendering core, the tools, and the DICOM image loader reading the
 * hub's WADO-RS (DICOM PS3.18 §10.4: series metadata `…/series/{series}/metadata`, frames
 * `…/instances/{sop}/frames/1`), with the reader's bearer token on every request.
 */

import {
  Enums,
  init as coreInit,
  metaData,
  RenderingEngine,
  type Types,
} from '@cornerstonejs/core';
import * as dicomImageLoader from '@cornerstonejs/dicom-image-loader';
import {
  AngleTool,
  addTool,
  Enums as ToolEnums,
  init as toolsInit,
  LengthTool,
  PanTool,
  StackScrollTool,
  ToolGroupManager,
  WindowLevelTool,
  ZoomTool,
} from '@cornerstonejs/tools';
import { authHeaders } from '../api';

export const DICOMWEB_ROOT = '/dicom-web';
let ready: Promise<void> | null = null;
let engine: RenderingEngine | null = null;

export const TOOL_NAMES = {
  wl: WindowLevelTool.toolName,
  pan: PanTool.toolName,
  zoom: ZoomTool.toolName,
  length: LengthTool.toolName,
  angle: AngleTool.toolName,
  scroll: StackScrollTool.toolName,
} as const;
export type ToolKey = keyof typeof TOOL_NAMES;

/** Start Cornerstone once per page. */
export function initCornerstone(): Promise<void> {
  ready ??= (async () => {
    coreInit();
    dicomImageLoader.init({
      maxWebWorkers: Math.max(1, Math.min(2, navigator.hardwareConcurrency || 1)),
      // Every WADO-RS request carries the reader's token (the hub scopes studies per user).
      beforeSend: () => authHeaders(),
    });
    // Higher priority than the loader's own provider (0): it runs first and falls through.
    metaData.addProvider(projectionPlane, 100);
    toolsInit();
    for (const tool of [WindowLevelTool, PanTool, ZoomTool, LengthTool, AngleTool, StackScrollTool]) {
      addTool(tool);
    }
  })();
  return ready;
}

export function renderingEngine(): RenderingEngine {
  engine ??= new RenderingEngine('rdx-engine');
  return engine;
}

type DicomJson = Record<string, { vr: string; Value?: unknown[] }>;

/**
 * Image plane of projection radiographs (DX/CR/MG): they carry no Image Position/Orientation
 * (Patient), so the loader marks their plane "default values" and Cornerstone then measures in
 * px. Their spacing is real all the same — Pixel Spacing at the patient plane (PS3.3
 * §10.7.1.3, e.g. magnification-corrected with Pixel Spacing Calibration Type GEOMETRY), or else
 * Imager Pixel Spacing at the detector divided by the Estimated Radiographic Magnification
 * Factor (PS3.3 §C.8.11.1) — so lengths and angles are given in mm from it.
 */
function projectionPlane(type: string, imageId: string): unknown {
  if (type !== 'imagePlaneModule' || !imageId.startsWith('wadors:')) return undefined;
  const instance = dicomImageLoader.wadors.metaDataManager.get(imageId) as unknown as DicomJson | undefined;
  if (!instance || instance['00200037']?.Value) return undefined; // cross-sectional: as it is
  const base = dicomImageLoader.wadors.metaData.metaDataProvider(type, imageId) as Record<string, any> | undefined;
  if (!base) return undefined;
  let spacing = (instance['00280030']?.Value as number[] | undefined)?.map(Number);
  if (!spacing) {
    const imager = (instance['00181164']?.Value as number[] | undefined)?.map(Number);
    const ermf = Number(instance['00181114']?.Value?.[0] ?? 1) || 1;
    spacing = imager?.map((v) => v / ermf);
  }
  if (!spacing || !(spacing[0] > 0) || !(spacing[1] > 0)) return undefined;
  return {
    ...base,
    pixelSpacing: spacing,
    rowPixelSpacing: spacing[0],
    columnPixelSpacing: spacing[1],
    usingDefaultValues: false,
  };
}

function firstValue(instance: DicomJson, tag: string): unknown {
  return instance[tag]?.Value?.[0];
}

export interface SeriesImages {
  imageIds: string[];
  metadata: DicomJson[];
}

/**
 * The image IDs of one series, in Instance Number order, with each instance's DICOM JSON
 * metadata (PS3.18 §F.2) registered for the loader; one imageId per frame.
 */
export async function loadSeriesImages(studyUid: string, seriesUid: string): Promise<SeriesImages> {
  const base = `${DICOMWEB_ROOT}/studies/${studyUid}/series/${seriesUid}`;
  const answer = await fetch(`${base}/metadata`, {
    headers: { ...authHeaders(), Accept: 'application/dicom+json' },
  });
  if (!answer.ok) throw new Error(`WADO-RS metadata: HTTP ${answer.status}`);
  const instances = ((await answer.json()) as DicomJson[]).slice();
  instances.sort(
    (a, b) => Number(firstValue(a, '00200013') ?? 0) - Number(firstValue(b, '00200013') ?? 0),
  );
  const imageIds: string[] = [];
  const metadata: DicomJson[] = [];
  for (const instance of instances) {
    const sop = String(firstValue(instance, '00080018'));
    const frames = Number(firstValue(instance, '00280008') ?? 1) || 1;
    for (let frame = 1; frame <= frames; frame++) {
      const imageId = `wadors:${location.origin}${base}/instances/${sop}/frames/${frame}`;
      dicomImageLoader.wadors.metaDataManager.add(imageId, instance as any);
      imageIds.push(imageId);
      metadata.push(instance);
    }
  }
  return { imageIds, metadata };
}

/** Window presets (centre, width) in the image's modality units; for CT these are HU. */
export const PRESETS: Record<string, { center: number; width: number } | null> = {
  presetDefault: null,
  presetChest: { center: 40, width: 400 },
  presetLung: { center: -600, width: 1500 },
  presetBone: { center: 480, width: 2500 },
};

/**
 * For projection radiographs (DX/CR) the pixel values are not HU, so the presets are taken as
 * fractions of the image's own value range: chest = soft tissue, lung = the dark end wide, bone
 * = the bright end narrow.
 */
export function presetFor(
  key: string,
  modality: string,
  range: { lower: number; upper: number },
): Types.VOIRange | null {
  if (modality === 'CT') {
    const preset = PRESETS[key];
    return preset ? { lower: preset.center - preset.width / 2, upper: preset.center + preset.width / 2 } : null;
  }
  const span = range.upper - range.lower;
  const at = (f: number) => range.lower + f * span;
  switch (key) {
    case 'presetChest':
      return { lower: at(0.1), upper: at(0.9) };
    case 'presetLung':
      return { lower: at(-0.1), upper: at(0.6) };
    case 'presetBone':
      return { lower: at(0.45), upper: at(1.05) };
    default:
      return null;
  }
}

export type ToolGroup = NonNullable<ReturnType<typeof ToolGroupManager.createToolGroup>>;

export function createToolGroup(id: string, viewportIds: string[]): ToolGroup {
  ToolGroupManager.destroyToolGroup(id);
  const group = ToolGroupManager.createToolGroup(id)!;
  for (const name of Object.values(TOOL_NAMES)) group.addTool(name);
  for (const viewportId of viewportIds) group.addViewport(viewportId, 'rdx-engine');
  return group;
}

/** Left button runs ``key``; right button zooms, middle pans, the wheel scrolls the stack. */
export function activate(group: ToolGroup, key: ToolKey): void {
  const { MouseBindings } = ToolEnums;
  for (const name of [TOOL_NAMES.wl, TOOL_NAMES.pan, TOOL_NAMES.zoom, TOOL_NAMES.length, TOOL_NAMES.angle]) {
    group.setToolPassive(name, { removeAllBindings: true });
  }
  group.setToolActive(TOOL_NAMES[key], { bindings: [{ mouseButton: MouseBindings.Primary }] });
  if (key !== 'zoom') group.setToolActive(TOOL_NAMES.zoom, { bindings: [{ mouseButton: MouseBindings.Secondary }] });
  if (key !== 'pan') group.setToolActive(TOOL_NAMES.pan, { bindings: [{ mouseButton: MouseBindings.Auxiliary }] });
  group.setToolActive(TOOL_NAMES.scroll, { bindings: [{ mouseButton: MouseBindings.Wheel }] });
}

export { Enums, metaData };
export type StackViewport = Types.IStackViewport;
