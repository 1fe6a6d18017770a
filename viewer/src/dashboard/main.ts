/**
 * 统计看板: the statistics a county health commission reads (issue 6), from /api/v1/stats.
 * Trend lines, per-township bars, TAT distribution, SLA gauge and the network tree (ECharts,
 * SVG renderer so the printout to PDF stays sharp), and every table with CSV/XLSX export.
 */
import * as echarts from 'echarts';
import { ApiError, api, authHeaders, login, queryString, token } from '../api';
import './dashboard.css';

interface Column { key: string; label: string; kind: string }
interface Table { name: string; title: string; columns: Column[]; rows: Record<string, any>[] }
interface TreeNode { name: string; level: string; received: number; read: number; value: number; children: TreeNode[] }

const LEVELS: Record<string, string> = { province: '省级', city: '市级', county: '县级', township: '乡镇', village: '村' };
const root = document.getElementById('dashboard')!;
const charts: echarts.ECharts[] = [];

function el<K extends keyof HTMLElementTagNameMap>(tag: K, attrs: Record<string, string> = {}, text = ''): HTMLElementTagNameMap[K] {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text) node.textContent = text;
  return node;
}

function chart(parent: HTMLElement, title: string, wide = false, tall = false): echarts.ECharts {
  const card = el('section', { class: wide ? 'card wide' : 'card' });
  card.append(el('h2', {}, title));
  const box = el('div', { class: tall ? 'chart tall' : 'chart', 'data-chart': title });
  card.append(box);
  parent.append(card);
  const instance = echarts.init(box, undefined, { renderer: 'svg' });
  charts.push(instance);
  return instance;
}

function filters(): Record<string, string> {
  const value = (id: string) => (document.getElementById(id) as HTMLInputElement | HTMLSelectElement | null)?.value ?? '';
  return { period: value('f-period') || 'month', from: value('f-from'), to: value('f-to'), modality: value('f-modality') };
}

async function download(name: string, fmt: 'csv' | 'xlsx', by = ''): Promise<void> {
  const query = { ...filters(), by, format: fmt };
  const answer = await fetch(`/api/v1/stats/${name}/export${queryString(query)}`, { headers: authHeaders() });
  if (!answer.ok) throw new ApiError(answer.status, await answer.text());
  const link = el('a', { href: URL.createObjectURL(await answer.blob()), download: `${name}.${fmt}` });
  link.click();
}

function tableCard(parent: HTMLElement, table: Table, by = ''): void {
  const card = el('section', { class: 'card wide table-card', 'data-table': table.name });
  const exports = el('span', { class: 'exports' }, '导出：');
  for (const fmt of ['csv', 'xlsx'] as const) {
    const button = el('button', {}, fmt.toUpperCase());
    button.onclick = () => void download(table.name, fmt, by);
    exports.append(button);
  }
  card.append(exports, el('h2', {}, table.title));
  const grid = el('table', { class: 'stats' });
  const head = el('tr');
  for (const c of table.columns) head.append(el('th', {}, c.label));
  grid.append(head);
  for (const row of table.rows) {
    const tr = el('tr');
    for (const c of table.columns) {
      const v = row[c.key];
      tr.append(el('td', c.kind === 'text' ? { class: 'text' } : {}, v === null || v === undefined ? '—' : String(v)));
    }
    grid.append(tr);
  }
  card.append(grid);
  parent.append(card);
}

function toTree(node: TreeNode): any {
  return {
    name: `${node.name}\n${LEVELS[node.level] ?? node.level} · 送检 ${node.value}`,
    value: node.value,
    children: node.children.map(toTree),
  };
}

async function render(): Promise<void> {
  for (const c of charts.splice(0)) c.dispose();
  const body = document.getElementById('dash-body')!;
  body.replaceChildren();
  const f = filters();
  const base = { from: f.from, to: f.to, modality: f.modality };
  const [trend, towns, tat, townTat, total, sla, workload, tree] = await Promise.all([
    api<Table>('GET', '/stats/volumes', { query: { ...base, period: f.period } }),
    api<Table>('GET', '/stats/volumes', { query: { ...base, period: 'all', by: 'township' } }),
    api<Table>('GET', '/stats/turnaround', { query: { ...base, period: f.period } }),
    api<Table>('GET', '/stats/turnaround', { query: { ...base, period: 'all', by: 'township' } }),
    api<{ tables: Table[] }>('GET', '/stats/dashboard', { query: { ...base, period: 'all' } }),
    api<Table>('GET', '/stats/turnaround', { query: { ...base, period: 'all' } }),
    api<Table>('GET', '/stats/workload', { query: { ...base, period: 'all', by: 'reader' } }),
    api<{ roots: TreeNode[] }>('GET', '/stats/network', { query: base }),
  ]);
  const totals = Object.fromEntries(total.tables.map((t) => [t.name, t.rows[0] ?? {}]));
  const kpis = el('div', { class: 'kpis' });
  const kpi = (label: string, value: unknown) => {
    const box = el('div', { class: 'kpi' });
    box.append(el('b', {}, value === undefined || value === null ? '—' : String(value)), el('span', {}, label));
    kpis.append(box);
  };
  kpi('接收检查', totals.volumes?.received);
  kpi('已诊断', totals.volumes?.read);
  kpi('上级诊断占比(%)', totals.volumes?.upper_share);
  kpi('报告时间中位数(分钟)', totals.turnaround?.tat_median_min);
  kpi('会诊/升级', (totals.escalations?.consultations ?? 0) + (totals.escalations?.auto_escalations ?? 0));
  kpi('互认避免重复检查', totals.recognition?.exams_avoided ?? 0);
  body.append(kpis);

  const periods = trend.rows.map((r) => r.period);
  chart(body, '检查量趋势', true).setOption({
    tooltip: { trigger: 'axis' },
    legend: { data: ['接收检查数', '已诊断数', '上级诊断数'] },
    xAxis: { type: 'category', data: periods },
    yAxis: { type: 'value' },
    series: [
      { name: '接收检查数', type: 'line', smooth: true, data: trend.rows.map((r) => r.received) },
      { name: '已诊断数', type: 'line', smooth: true, data: trend.rows.map((r) => r.read) },
      { name: '上级诊断数', type: 'line', smooth: true, data: trend.rows.map((r) => r.read_upper) },
    ],
  });
  chart(body, '各乡镇卫生院检查量').setOption({
    tooltip: { trigger: 'axis' },
    legend: { data: ['接收检查数', '阳性数'] },
    grid: { left: 110 },
    yAxis: { type: 'category', data: towns.rows.map((r) => r.label) },
    xAxis: { type: 'value' },
    series: [
      { name: '接收检查数', type: 'bar', data: towns.rows.map((r) => r.received) },
      { name: '阳性数', type: 'bar', data: towns.rows.map((r) => r.positive) },
    ],
  });
  const rate = sla.rows[0]?.sla_rate ?? 0;
  chart(body, '时效达标率').setOption({
    series: [{
      type: 'gauge', min: 0, max: 100, progress: { show: true, width: 14 },
      axisLine: { lineStyle: { width: 14 } }, detail: { formatter: '{value}%', fontSize: 26 },
      data: [{ value: rate, name: '按时完成' }],
    }],
  });
  chart(body, '报告时间分布（分钟）').setOption({
    tooltip: { trigger: 'axis' },
    legend: { data: ['中位数', 'P90'] },
    xAxis: { type: 'category', data: tat.rows.map((r) => r.period) },
    yAxis: { type: 'value', name: '分钟' },
    series: [
      { name: '中位数', type: 'bar', data: tat.rows.map((r) => r.tat_median_min) },
      { name: 'P90', type: 'bar', data: tat.rows.map((r) => r.tat_p90_min) },
    ],
  });
  chart(body, '各乡镇报告时间（分钟）').setOption({
    tooltip: { trigger: 'axis' },
    legend: { data: ['中位数', 'P90'] },
    grid: { left: 110 },
    yAxis: { type: 'category', data: townTat.rows.map((r) => r.label) },
    xAxis: { type: 'value' },
    series: [
      { name: '中位数', type: 'bar', data: townTat.rows.map((r) => r.tat_median_min) },
      { name: 'P90', type: 'bar', data: townTat.rows.map((r) => r.tat_p90_min) },
    ],
  });
  chart(body, '医共体网络', true, true).setOption({
    tooltip: { trigger: 'item' },
    series: [{
      // One tree per root institution (a hub may serve several provinces' partners): ECharts
      // draws one root, so they hang under the hub.
      type: 'tree',
      data: [{ name: '远程诊断中心', value: tree.roots.reduce((n, r) => n + r.value, 0), children: tree.roots.map(toTree) }], top: '4%', bottom: '4%', left: '8%', right: '18%',
      symbolSize: 9, initialTreeDepth: -1, label: { position: 'left', fontSize: 11 },
      leaves: { label: { position: 'right' } },
    }],
  });
  for (const t of total.tables) tableCard(body, t);
  tableCard(body, workload, 'reader');
}

function header(): HTMLElement {
  const head = el('header', { class: 'dash-head' });
  head.append(el('h1', {}, '医共体远程诊断统计'));
  const period = el('select', { id: 'f-period' });
  for (const [value, label] of [['day', '按日'], ['week', '按周'], ['month', '按月'], ['year', '按年']]) {
    const option = el('option', { value }, label);
    if (value === 'month') option.selected = true;
    period.append(option);
  }
  const modality = el('select', { id: 'f-modality' });
  for (const [value, label] of [['', '全部检查'], ['ecg', '心电'], ['imaging', '影像']]) modality.append(el('option', { value }, label));
  const params = new URLSearchParams(location.search);
  const from = el('input', { id: 'f-from', type: 'date', value: params.get('from') ?? '' });
  const to = el('input', { id: 'f-to', type: 'date', value: params.get('to') ?? '' });
  const wrap = (label: string, input: HTMLElement) => {
    const box = el('label', {}, label);
    box.append(input);
    return box;
  };
  const refresh = el('button', {}, '刷新');
  refresh.onclick = () => void show();
  const print = el('button', {}, '打印 / PDF');
  print.onclick = () => window.print();
  head.append(wrap('周期', period), wrap('类型', modality), wrap('从', from), wrap('至', to), refresh, print);
  return head;
}

async function show(): Promise<void> {
  try {
    await render();
    root.dataset.ready = 'true';
  } catch (error) {
    const body = document.getElementById('dash-body')!;
    const detail = error instanceof ApiError ? `${error.status}: ${error.detail}` : String(error);
    body.replaceChildren(el('div', { class: 'error' }, `无法加载统计数据（${detail}）`));
    root.dataset.ready = 'error';
  }
}

function loginForm(): void {
  const form = el('form', { class: 'login' });
  const user = el('input', { name: 'username', placeholder: '用户名' });
  const pass = el('input', { name: 'password', type: 'password', placeholder: '密码' });
  const message = el('div', { class: 'error' });
  form.append(el('h2', {}, '统计看板登录'), user, pass, el('button', { type: 'submit' }, '登录'), message);
  form.onsubmit = async (event) => {
    event.preventDefault();
    try {
      await login(user.value, pass.value);
      start();
    } catch (error) {
      message.textContent = error instanceof ApiError ? error.detail : String(error);
    }
  };
  root.replaceChildren(form);
}

function start(): void {
  if (!token()) return loginForm();
  root.replaceChildren(header(), el('main', { class: 'dash-grid', id: 'dash-body' }));
  void show();
}

window.addEventListener('resize', () => charts.forEach((c) => c.resize()));
window.addEventListener('beforeprint', () => charts.forEach((c) => c.resize()));
start();
