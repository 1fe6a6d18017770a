/**
 * The 12-lead ECG on standard paper, drawn on a canvas: 1 mm small and 5 mm large squares,
 * 3×4 leads (I II III | aVR aVL aVF | V1 V2 V3 | V4 V5 V6, 2.5 s each) and a 10 s lead II rhythm
 * strip, a 1 mV calibration pulse per row, gain 5/10/20 mm/mV and speed 25/50 mm/s; calipers
 * measure an interval by dragging, read out in ms and bpm.
 */

export interface Leads {
  sampling_rate: number;
  duration_s: number;
  leads: Record<string, number[]>;
}

export interface Caliper {
  /** seconds from the start of the row's time window */
  t0: number;
  t1: number;
  ms: number;
  bpm: number;
}

const LAYOUT = [
  ['I', 'aVR', 'V1', 'V4'],
  ['II', 'aVL', 'V2', 'V5'],
  ['III', 'aVF', 'V3', 'V6'],
];
const RHYTHM_LEAD = 'II';
const COLUMN_SECONDS = 2.5;
const CAL_SECONDS = 0.2; // the calibration pulse: 1 mV high, 200 ms wide
const MARGIN_MM = 5;

export class ECGCanvas {
  readonly canvas: HTMLCanvasElement;
  gain = 10; // mm/mV
  speed = 25; // mm/s
  caliper: Caliper | null = null;
  onCaliper: (c: Caliper | null) => void = () => undefined;
  private pxPerMm = 4;
  private drag: { x0: number } | null = null;
  private byName: Map<string, number[]>;

  constructor(private data: Leads) {
    this.canvas = document.createElement('canvas');
    this.canvas.className = 'ecg-canvas';
    this.byName = new Map(Object.entries(data.leads).map(([k, v]) => [k.toUpperCase(), v]));
    this.canvas.addEventListener('pointerdown', (e) => this.down(e));
    this.canvas.addEventListener('pointermove', (e) => this.move(e));
    this.canvas.addEventListener('pointerup', () => this.up());
  }

  /** Fit 10 s at 25 mm/s (+ margins) into ``widthPx``; 50 mm/s is then twice as wide. */
  fit(widthPx: number): void {
    this.pxPerMm = Math.max(2, widthPx / (COLUMN_SECONDS * 4 * 25 + CAL_SECONDS * 25 + 2 * MARGIN_MM));
    this.draw();
  }

  get scale(): number {
    return this.pxPerMm;
  }

  private rowHeightMm(): number {
    return Math.max(25, 3 * this.gain);
  }

  private lead(name: string): number[] | undefined {
    return this.byName.get(name.toUpperCase());
  }

  /** x (px) of time ``t`` (s) within a row, after the calibration pulse. */
  private xOf(t: number): number {
    return (MARGIN_MM + (CAL_SECONDS + t) * this.speed) * this.pxPerMm;
  }

  private timeOf(x: number): number {
    return x / this.pxPerMm / this.speed - MARGIN_MM / this.speed - CAL_SECONDS;
  }

  draw(): void {
    const seconds = COLUMN_SECONDS * 4;
    const rowMm = this.rowHeightMm();
    const widthMm = 2 * MARGIN_MM + (CAL_SECONDS + seconds) * this.speed;
    const heightMm = 2 * MARGIN_MM + rowMm * 4;
    const ratio = window.devicePixelRatio || 1;
    const w = Math.round(widthMm * this.pxPerMm);
    const hgt = Math.round(heightMm * this.pxPerMm);
    this.canvas.width = w * ratio;
    this.canvas.height = hgt * ratio;
    this.canvas.style.width = `${w}px`;
    this.canvas.style.height = `${hgt}px`;
    this.canvas.dataset.pxPerMm = String(this.pxPerMm);
    this.canvas.dataset.gain = String(this.gain);
    this.canvas.dataset.speed = String(this.speed);
    const ctx = this.canvas.getContext('2d')!;
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.fillStyle = '#fff8f6';
    ctx.fillRect(0, 0, w, hgt);
    this.grid(ctx, w, hgt);

    for (let row = 0; row < 4; row++) {
      const baseline = (MARGIN_MM + rowMm * (row + 0.6)) * this.pxPerMm;
      this.calibration(ctx, baseline);
      if (row < 3) {
        LAYOUT[row].forEach((name, col) => {
          this.trace(ctx, name, col * COLUMN_SECONDS, (col + 1) * COLUMN_SECONDS, baseline);
          this.label(ctx, name, this.xOf(col * COLUMN_SECONDS) + 4, baseline - rowMm * 0.45 * this.pxPerMm);
          if (col > 0) {
            const x = this.xOf(col * COLUMN_SECONDS);
            ctx.strokeStyle = '#000';
            ctx.lineWidth = 1;
            ctx.beginPath();
            ctx.moveTo(x, baseline - 3 * this.pxPerMm);
            ctx.lineTo(x, baseline + 3 * this.pxPerMm);
            ctx.stroke();
          }
        });
      } else {
        this.trace(ctx, RHYTHM_LEAD, 0, seconds, baseline);
        this.label(ctx, `${RHYTHM_LEAD}`, this.xOf(0) + 4, baseline - rowMm * 0.45 * this.pxPerMm);
      }
    }
    ctx.fillStyle = '#333';
    ctx.font = `${Math.max(11, 2.5 * this.pxPerMm)}px sans-serif`;
    ctx.fillText(`${this.speed} mm/s  ${this.gain} mm/mV`, w - 36 * this.pxPerMm, hgt - 1.5 * this.pxPerMm);
    this.drawCaliper(ctx, hgt);
  }

  private grid(ctx: CanvasRenderingContext2D, w: number, hgt: number): void {
    const mm = this.pxPerMm;
    for (const [step, colour, width] of [
      [1, '#f6c8c0', 0.5],
      [5, '#e58a7c', 1],
    ] as const) {
      ctx.strokeStyle = colour;
      ctx.lineWidth = width;
      ctx.beginPath();
      for (let x = 0; x <= w; x += step * mm) {
        ctx.moveTo(Math.round(x) + 0.5, 0);
        ctx.lineTo(Math.round(x) + 0.5, hgt);
      }
      for (let y = 0; y <= hgt; y += step * mm) {
        ctx.moveTo(0, Math.round(y) + 0.5);
        ctx.lineTo(w, Math.round(y) + 0.5);
      }
      ctx.stroke();
    }
  }

  private calibration(ctx: CanvasRenderingContext2D, baseline: number): void {
    const x0 = MARGIN_MM * this.pxPerMm;
    const w = CAL_SECONDS * this.speed * this.pxPerMm;
    const top = baseline - this.gain * this.pxPerMm;
    ctx.strokeStyle = '#000';
    ctx.lineWidth = 1.2;
    ctx.beginPath();
    ctx.moveTo(x0, baseline);
    ctx.lineTo(x0 + w * 0.2, baseline);
    ctx.lineTo(x0 + w * 0.2, top);
    ctx.lineTo(x0 + w * 0.8, top);
    ctx.lineTo(x0 + w * 0.8, baseline);
    ctx.lineTo(x0 + w, baseline);
    ctx.stroke();
  }

  private trace(ctx: CanvasRenderingContext2D, name: string, t0: number, t1: number, baseline: number): void {
    const values = this.lead(name);
    if (!values) return;
    const fs = this.data.sampling_rate;
    const first = Math.max(0, Math.floor(t0 * fs));
    const last = Math.min(values.length - 1, Math.ceil(t1 * fs));
    const yPerMv = this.gain * this.pxPerMm;
    ctx.strokeStyle = '#111';
    ctx.lineWidth = 1.1;
    ctx.beginPath();
    for (let i = first; i <= last; i++) {
      const x = this.xOf(i / fs);
      const y = baseline - values[i] * yPerMv;
      if (i === first) ctx.moveTo(x, y);
      else ctx.lineTo(x, y);
    }
    ctx.stroke();
  }

  private label(ctx: CanvasRenderingContext2D, text: string, x: number, y: number): void {
    ctx.fillStyle = '#000';
    ctx.font = `bold ${Math.max(12, 3 * this.pxPerMm)}px sans-serif`;
    ctx.fillText(text, x, y);
  }

  private drawCaliper(ctx: CanvasRenderingContext2D, hgt: number): void {
    if (!this.caliper) return;
    const x0 = this.xOf(this.caliper.t0);
    const x1 = this.xOf(this.caliper.t1);
    ctx.strokeStyle = '#0055cc';
    ctx.lineWidth = 1.5;
    ctx.setLineDash([6, 4]);
    ctx.beginPath();
    for (const x of [x0, x1]) {
      ctx.moveTo(x, 0);
      ctx.lineTo(x, hgt);
    }
    ctx.stroke();
    ctx.setLineDash([]);
    ctx.fillStyle = 'rgba(0, 85, 204, 0.08)';
    ctx.fillRect(Math.min(x0, x1), 0, Math.abs(x1 - x0), hgt);
    ctx.fillStyle = '#0055cc';
    ctx.font = `bold ${Math.max(12, 3 * this.pxPerMm)}px sans-serif`;
    ctx.fillText(`${Math.round(this.caliper.ms)} ms · ${Math.round(this.caliper.bpm)} bpm`, Math.min(x0, x1) + 4, 16);
  }

  private pointerX(e: PointerEvent): number {
    const rect = this.canvas.getBoundingClientRect();
    return e.clientX - rect.left;
  }

  private setCaliper(x0: number, x1: number): void {
    const t0 = this.timeOf(x0);
    const t1 = this.timeOf(x1);
    const ms = Math.abs(t1 - t0) * 1000;
    this.caliper = ms >= 1 ? { t0, t1, ms, bpm: 60_000 / ms } : null;
    this.onCaliper(this.caliper);
    this.draw();
  }

  private down(e: PointerEvent): void {
    this.canvas.setPointerCapture(e.pointerId);
    this.drag = { x0: this.pointerX(e) };
  }

  private move(e: PointerEvent): void {
    if (this.drag) this.setCaliper(this.drag.x0, this.pointerX(e));
  }

  private up(): void {
    this.drag = null;
  }

  clearCaliper(): void {
    this.caliper = null;
    this.onCaliper(null);
    this.draw();
  }
}
