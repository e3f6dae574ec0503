// semnet status page. Reads root's read-only /api/v1 every few seconds and renders it:
// no framework, nothing fetched from anywhere but root, and every value from the API is
// inserted as text (textContent, setAttribute), never parsed as markup.
'use strict';

(function () {
  const API = '/api/v1';
  const REFRESH_MS = 5000;
  const TOKEN_KEY = 'semnet.token';
  const KM_PER_DEGREE = 111.195; // along a meridian, on a sphere of 6371 km

  // Marker colours, set as fill attributes so they can be read back from the DOM.
  const COLOR = {
    cluster: '#2457c5',
    clusterDegraded: '#b7791f',
    node: '#0f766e',
    gateway: '#9333ea',
    white: '#ffffff',
  };

  const $ = (id) => document.getElementById(id);
  const mapEl = $('map');
  // The SVG namespace, read from the page's own <svg> element.
  const SVGNS = mapEl.namespaceURI;

  // ---- token ---------------------------------------------------------------------------

  // A token in the fragment (/ui/#token=...) never reaches the server; it is moved to
  // sessionStorage (this tab only) and removed from the address bar and history.
  function tokenFromFragment() {
    const params = new URLSearchParams(location.hash.slice(1));
    if (!params.has('token')) return;
    const t = params.get('token').trim();
    if (t) sessionStorage.setItem(TOKEN_KEY, t);
    history.replaceState(null, '', location.pathname + location.search);
  }

  const token = () => sessionStorage.getItem(TOKEN_KEY) || '';

  // ---- API -----------------------------------------------------------------------------

  class APIError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  async function api(path) {
    const headers = { Accept: 'application/json' };
    if (token()) headers.Authorization = 'Bearer ' + token();
    let resp;
    try {
      resp = await fetch(API + path, { headers, cache: 'no-store', credentials: 'omit' });
    } catch (e) {
      throw new APIError(0, 'root did not answer GET ' + API + path + ' (' + e.message + ')');
    }
    if (resp.ok) return resp.json();
    let detail = resp.statusText;
    try {
      const p = await resp.json(); // problem+json
      detail = p.detail || p.title || detail;
    } catch (_) { /* not JSON: keep the status text */ }
    throw new APIError(resp.status, detail);
  }

  async function allServices() {
    const out = [];
    let after = '';
    for (;;) {
      const page = await api('/services?limit=1000' + (after ? '&after=' + encodeURIComponent(after) : ''));
      out.push(...(page.items || []));
      if (!page.next) return out;
      after = page.next;
    }
  }

  // A service deleted between the two reads has no instances rather than failing the page.
  function instancesOf(svc) {
    return api('/services/' + encodeURIComponent(svc.id) + '/instances').catch((e) => {
      if (e.status === 404) return [];
      throw e;
    });
  }

  async function load() {
    const [clusters, services, subnets, pools, gateways, exposures] = await Promise.all([
      api('/clusters'), allServices(), api('/subnets'), api('/pools'), api('/gateways'), api('/exposures'),
    ]);
    const lists = await Promise.all(services.map(instancesOf));
    const instances = [];
    services.forEach((s, i) => {
      for (const inst of lists[i]) instances.push(Object.assign({ job: s.job_name, service_id: s.id }, inst));
    });
    return { clusters, services, instances, subnets, pools, gateways, exposures: exposures.items || [] };
  }

  // ---- model ---------------------------------------------------------------------------

  function ipv4(s) {
    const p = String(s).split('.');
    if (p.length !== 4) return null;
    let n = 0;
    for (const x of p) {
      const v = Number(x);
      if (!/^\d+$/.test(x) || v > 255) return null;
      n = n * 256 + v;
    }
    return n;
  }

  function inPrefix(addr, prefix) {
    const [net, bits] = String(prefix).split('/');
    const a = ipv4(addr), b = ipv4(net), n = Number(bits);
    if (a === null || b === null || !(n >= 0 && n <= 32)) return false;
    const size = 2 ** (32 - n);
    return Math.floor(a / size) === Math.floor(b / size);
  }

  // Nodes are not an API object: a worker node is known by its subnet (node_id,
  // cluster_id), by the instances placed on it (host_ip; the namespace IP lies in the
  // node's subnet) and by its gateway registration (a gateway's id is its node id). Its
  // location is where its instances report running.
  function buildNodes(d) {
    const nodes = new Map();
    const node = (key, label, cluster) => {
      let n = nodes.get(key);
      if (!n) {
        n = { key, label, cluster, subnet: null, hosts: new Set(), instances: [], gateway: null, loc: null, locRank: 0 };
        nodes.set(key, n);
      }
      return n;
    };
    const locate = (n, loc, rank) => {
      if (loc && rank > n.locRank) { n.loc = loc; n.locRank = rank; }
    };
    for (const s of d.subnets) node('node:' + s.node_id, s.node_id, s.cluster_id).subnet = s;
    for (const inst of d.instances) {
      const sn = inst.namespace_ip ? d.subnets.find((s) => inPrefix(inst.namespace_ip, s.subnet_v4)) : null;
      let n;
      if (sn) n = nodes.get('node:' + sn.node_id);
      else if (inst.host_ip) n = node('host:' + inst.host_ip, inst.host_ip, inst.cluster_id);
      else continue; // not placed yet
      if (inst.host_ip) n.hosts.add(inst.host_ip + (inst.host_port ? ':' + inst.host_port : ''));
      n.instances.push(inst);
      inst.node = n;
      locate(n, inst.location, inst.status === 'running' ? 3 : 1);
    }
    for (const g of d.gateways) {
      const n = node('node:' + g.id, g.id, g.cluster_id);
      n.gateway = g;
      if (g.host_ip) n.hosts.add(g.host_ip + (g.host_port ? ':' + g.host_port : ''));
      locate(n, g.location, 2);
    }
    return [...nodes.values()].sort((a, b) => a.label.localeCompare(b.label));
  }

  // ---- DOM helpers ---------------------------------------------------------------------

  function put(node, attrs, children) {
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v !== undefined && v !== null && v !== false) node.setAttribute(k, v);
    }
    for (const c of children) {
      if (c === null || c === undefined || c === false) continue;
      node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return node;
  }
  const h = (tag, attrs, ...children) => put(document.createElement(tag), attrs, children);
  const s = (tag, attrs, ...children) => put(document.createElementNS(SVGNS, tag), attrs, children);

  function fillBody(table, rows, cols, emptyText) {
    const body = $(table).tBodies[0];
    body.replaceChildren(...rows);
    if (!rows.length) body.append(h('tr', null, h('td', { class: 'empty', colspan: cols }, emptyText)));
  }

  const statusPill = (st) => h('span', { class: 'status ' + (st || 'unknown'), 'data-status': st || 'unknown' }, st || 'unknown');
  const ipCell = (v4, v6) => h('td', { class: 'ip' }, v4 || '–', v6 ? h('span', { class: 'sub' }, v6) : null);

  function fmtCount(n) {
    if (n < 1e7) return n.toLocaleString('en-US');
    const log = Math.log2(n);
    if (Math.abs(log - Math.round(log)) < 1e-9) return '2^' + Math.round(log);
    return n.toExponential(2);
  }

  function ago(t) {
    const sec = Math.max(0, Math.round((Date.now() - Date.parse(t)) / 1000));
    if (!isFinite(sec)) return '–';
    if (sec < 90) return sec + ' s ago';
    if (sec < 5400) return Math.round(sec / 60) + ' min ago';
    return Math.round(sec / 3600) + ' h ago';
  }

  const fmtDeg = (v, pos, neg, dec) => Math.abs(v).toFixed(dec) + '°' + (v > 0 ? pos : v < 0 ? neg : '');
  const fmtLoc = (p) => fmtDeg(p.lat, 'N', 'S', 2) + ' ' + fmtDeg(p.lon, 'E', 'W', 2);

  // ---- map -----------------------------------------------------------------------------

  const W = 760, H = 360, PAD = 26;
  const MIN_SPAN = 2; // degrees: a single site still shows its surroundings
  const MAX_BOX_RADIUS_KM = 300; // larger cluster radii are drawn but don't set the zoom

  // fit returns an equirectangular projection (x proportional to longitude scaled by the
  // cosine of the middle latitude, y to latitude) that fits the points with margins.
  function fit(pts) {
    let lat0 = -60, lat1 = 75, lon0 = -180, lon1 = 180; // the world, when nothing has a location
    if (pts.length) {
      lat0 = Math.min(...pts.map((p) => p.lat)); lat1 = Math.max(...pts.map((p) => p.lat));
      lon0 = Math.min(...pts.map((p) => p.lon)); lon1 = Math.max(...pts.map((p) => p.lon));
    }
    const cLat = (lat0 + lat1) / 2, cLon = (lon0 + lon1) / 2;
    const dLat = Math.max(lat1 - lat0, MIN_SPAN) * 1.3, dLon = Math.max(lon1 - lon0, MIN_SPAN) * 1.3;
    const k = Math.max(Math.cos(cLat * Math.PI / 180), 0.2);
    const sc = Math.min((W - 2 * PAD) / (dLon * k), (H - 2 * PAD) / dLat); // px per degree of latitude
    return {
      sc,
      x: (lon) => W / 2 + (lon - cLon) * k * sc,
      y: (lat) => H / 2 - (lat - cLat) * sc,
      lon: (x) => cLon + (x - W / 2) / (k * sc),
      lat: (y) => cLat - (y - H / 2) / sc,
    };
  }

  function gridStep(span) {
    for (const st of [0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30, 45]) if (span / st <= 8) return st;
    return 90;
  }

  function graticule(g, v) {
    const lonA = Math.max(v.lon(0), -180), lonB = Math.min(v.lon(W), 180);
    const latA = Math.max(v.lat(H), -90), latB = Math.min(v.lat(0), 90);
    const stLon = gridStep(lonB - lonA), stLat = gridStep(latB - latA);
    for (let i = Math.ceil(lonA / stLon); i * stLon <= lonB; i++) {
      const lon = i * stLon, x = v.x(lon);
      g.append(s('line', { class: 'grid', x1: x, y1: 0, x2: x, y2: H }));
      g.append(s('text', { class: 'grid-label', x: x + 3, y: H - 5 }, fmtDeg(lon, 'E', 'W', stLon < 1 ? 1 : 0)));
    }
    for (let i = Math.ceil(latA / stLat); i * stLat <= latB; i++) {
      const lat = i * stLat, y = v.y(lat);
      g.append(s('line', { class: 'grid', x1: 0, y1: y, x2: W, y2: y }));
      g.append(s('text', { class: 'grid-label', x: 4, y: y - 3 }, fmtDeg(lat, 'N', 'S', stLat < 1 ? 1 : 0)));
    }
  }

  function drawMap(d, nodes) {
    const clusters = new Map(d.clusters.filter((c) => c.location).map((c) => [c.id, c]));
    const pts = [];
    for (const c of clusters.values()) {
      pts.push(c.location);
      const r = c.radius_km / KM_PER_DEGREE;
      if (c.radius_km > 0 && c.radius_km <= MAX_BOX_RADIUS_KM) {
        pts.push({ lat: c.location.lat + r, lon: c.location.lon }, { lat: c.location.lat - r, lon: c.location.lon });
      }
    }
    for (const n of nodes) if (n.loc) pts.push(n.loc);
    const v = fit(pts);

    const grid = s('g'), rings = s('g'), links = s('g'), marks = s('g'), nodeMarks = s('g'), labels = s('g');
    graticule(grid, v);

    for (const c of clusters.values()) {
      const x = v.x(c.location.lon), y = v.y(c.location.lat);
      const rpx = c.radius_km / KM_PER_DEGREE * v.sc;
      if (rpx >= 3 && rpx <= 2 * W) rings.append(s('circle', { class: 'radius', cx: x, cy: y, r: rpx }));
      const ok = c.status === 'ok' || c.status === 'registered';
      marks.append(s('circle', {
        class: 'cluster', id: 'cluster-' + c.id, 'data-cluster': c.id, cx: x, cy: y, r: 8,
        fill: ok ? COLOR.cluster : COLOR.clusterDegraded, stroke: COLOR.white, 'stroke-width': 2,
      }, s('title', null, 'cluster ' + c.id + (c.name && c.name !== c.id ? ' (' + c.name + ')' : '') +
        ' — ' + c.status + ', ' + fmtLoc(c.location) + (c.radius_km ? ', radius ' + c.radius_km + ' km' : ''))));
      labels.append(s('text', { class: 'label', x: x + 12, y: y + 4 }, c.id));
    }

    // Nodes without a location sit on a small ring beside their cluster, hollow.
    const beside = new Map();
    let hidden = 0;
    for (const n of nodes) {
      const c = clusters.get(n.cluster);
      let x, y;
      if (n.loc) {
        x = v.x(n.loc.lon); y = v.y(n.loc.lat);
      } else if (c) {
        const i = beside.get(c.id) || 0;
        beside.set(c.id, i + 1);
        const a = Math.PI * (0.75 + 0.22 * i);
        x = v.x(c.location.lon) + 20 * Math.cos(a); y = v.y(c.location.lat) + 20 * Math.sin(a);
      } else {
        hidden++;
        continue;
      }
      if (c) links.append(s('line', { class: 'link', x1: x, y1: y, x2: v.x(c.location.lon), y2: v.y(c.location.lat) }));
      const title = s('title', null, (n.gateway ? 'gateway ' : 'node ') + n.label + ' in cluster ' + (n.cluster || '?') +
        (n.hosts.size ? ', host ' + [...n.hosts].join(', ') : '') + ', ' + n.instances.length + ' instance(s)' +
        (n.loc ? ', ' + fmtLoc(n.loc) : ', location unknown'));
      const attrs = { class: 'node', 'data-node': n.label, 'data-cluster': n.cluster || '', 'data-located': n.loc ? 'yes' : 'no' };
      const color = n.gateway ? COLOR.gateway : COLOR.node;
      if (!n.loc) Object.assign(attrs, { fill: COLOR.white, stroke: color, 'stroke-width': 2 });
      else Object.assign(attrs, { fill: color, stroke: COLOR.white, 'stroke-width': 1.5 });
      if (n.gateway) {
        attrs['data-gateway'] = n.gateway.id;
        attrs.points = [[x, y - 8], [x + 8, y], [x, y + 8], [x - 8, y]].map((p) => p.join(',')).join(' ');
        nodeMarks.append(s('polygon', attrs, title));
      } else {
        Object.assign(attrs, { cx: x, cy: y, r: 5 });
        nodeMarks.append(s('circle', attrs, title));
      }
      // Unlocated nodes sit left of their cluster: their labels go further left.
      labels.append(s('text', n.loc ? { class: 'node-label', x: x + 9, y: y + 4 }
        : { class: 'node-label', x: x - 9, y: y + 4, 'text-anchor': 'end' }, n.label));
    }
    if (!pts.length) labels.append(s('text', { class: 'note', x: W / 2, y: H / 2, 'text-anchor': 'middle' }, 'no cluster or node has a location yet'));
    if (hidden) labels.append(s('text', { class: 'note', x: W - 8, y: 16, 'text-anchor': 'end' }, hidden + ' node(s) without a location or cluster not shown'));
    mapEl.replaceChildren(grid, rings, links, marks, nodeMarks, labels);
  }

  // ---- tables --------------------------------------------------------------------------

  function drawPools(pools) {
    const rows = pools.map((p) => {
      const frac = p.size ? p.used / p.size : 0;
      const fill = h('div');
      // A used pool shows at least a sliver, however large the pool.
      fill.style.width = (p.used ? Math.max(frac * 100, 1.5) : 0) + '%';
      const bar = h('div', { class: 'bar' + (frac >= 0.95 ? ' full' : frac >= 0.8 ? ' high' : ''), title: (frac * 100).toPrecision(3) + '% used' }, fill);
      return h('tr', { 'data-pool': p.name },
        h('td', null, p.name),
        h('td', { class: 'ip' }, p.prefix),
        h('td', { class: 'num' }, h('span', { class: 'used' }, String(p.used)), ' / ', fmtCount(p.size),
          p.quarantined ? h('span', { class: 'sub' }, p.quarantined + ' quarantined') : null),
        h('td', null, bar));
    });
    fillBody('pools', rows, 4, 'no pools');
  }

  function drawClusters(clusters, nodes) {
    const rows = [...clusters].sort((a, b) => a.id.localeCompare(b.id)).map((c) => h('tr', { 'data-cluster': c.id },
      h('td', null, c.id, c.name && c.name !== c.id ? h('span', { class: 'sub' }, c.name) : null),
      h('td', null, statusPill(c.status)),
      h('td', { class: 'nowrap' }, c.location ? fmtLoc(c.location) : '–', c.radius_km ? h('span', { class: 'sub' }, 'radius ' + c.radius_km + ' km') : null),
      h('td', { class: 'num' }, String(nodes.filter((n) => n.cluster === c.id).length)),
      h('td', { title: c.last_seen }, ago(c.last_seen))));
    fillBody('clusters', rows, 5, 'no clusters registered');
  }

  function drawServices(d) {
    const byService = new Map();
    for (const inst of d.instances) {
      const x = byService.get(inst.service_id) || { total: 0, running: 0 };
      x.total++;
      if (inst.status === 'running') x.running++;
      byService.set(inst.service_id, x);
    }
    const rows = [...d.services].sort((a, b) => a.job_name.localeCompare(b.job_name)).map((svc) => {
      const n = byService.get(svc.id) || { total: 0, running: 0 };
      const exp = d.exposures.filter((e) => e.service_id === svc.id)
        .map((e) => h('span', { class: 'line' }, e.protocol + ' ' + e.public_port + ' → ' + e.service_port + ' (' + (e.policy || 'round_robin') + ')'));
      return h('tr', { 'data-job': svc.job_name, 'data-service': svc.id },
        h('td', { title: 'service ' + svc.id }, svc.job_name),
        h('td', { class: 'ip', 'data-field': 'rr_ip' }, svc.rr_ip),
        h('td', { class: 'ip', 'data-field': 'rr_ip_v6' }, svc.rr_ip_v6),
        h('td', { class: 'ip', 'data-field': 'closest_ip' }, svc.closest_ip),
        h('td', { class: 'ip', 'data-field': 'closest_ip_v6' }, svc.closest_ip_v6),
        h('td', { class: 'num', 'data-field': 'instances' }, String(n.total), h('span', { class: 'sub' }, n.running + ' running')),
        h('td', { 'data-field': 'exposed' }, ...(exp.length ? exp : ['–'])));
    });
    fillBody('services', rows, 7, 'no services deployed');
  }

  function drawInstances(instances) {
    const rows = [...instances]
      .sort((a, b) => a.job.localeCompare(b.job) || a.instance_number - b.instance_number)
      .map((inst) => h('tr', { 'data-job': inst.job, 'data-instance': inst.instance_number },
        h('td', null, inst.job),
        h('td', { class: 'num' }, String(inst.instance_number)),
        ipCell(inst.instance_ip, inst.instance_ip_v6),
        h('td', null, statusPill(inst.status)),
        h('td', null, inst.cluster_id || '–'),
        h('td', null, inst.node ? inst.node.label : '–',
          inst.host_ip ? h('span', { class: 'sub ip' }, inst.host_ip + (inst.host_port ? ':' + inst.host_port : '')) : null),
        ipCell(inst.namespace_ip, inst.namespace_ip_v6)));
    fillBody('instances', rows, 7, 'no instances');
  }

  function render(d) {
    const nodes = buildNodes(d);
    drawMap(d, nodes);
    drawPools(d.pools);
    drawClusters(d.clusters, nodes);
    drawServices(d);
    drawInstances(d.instances);
    const running = d.instances.filter((i) => i.status === 'running').length;
    const plural = (n, w) => n + ' ' + w + (n === 1 ? '' : 's');
    $('summary').textContent = [plural(d.clusters.length, 'cluster'), plural(nodes.length, 'node'),
      plural(d.services.length, 'service'), plural(d.instances.length, 'instance') + ' (' + running + ' running)'].join(' · ');
    $('updated').textContent = 'updated ' + new Date().toLocaleTimeString('en-GB');
    document.body.dataset.rendered = String(Date.now());
  }

  // ---- refresh loop --------------------------------------------------------------------

  function showAuth(detail) {
    const msg = token()
      ? 'Root refused the API token (401 Unauthorized: ' + detail + ').'
      : 'Root needs an API token (401 Unauthorized: ' + detail + ').';
    $('auth-message').textContent = msg + ' Enter the token root was started with (--token or SEMNET_TOKEN), ' +
      'or open this page as /ui/#token=<token>.';
    $('auth').hidden = false;
    document.querySelector('main').hidden = true;
    $('summary').textContent = 'not signed in';
    $('forget').hidden = !token();
  }

  function showError(msg) {
    $('error').textContent = msg ? 'Refresh failed: ' + msg + ' (retrying every ' + REFRESH_MS / 1000 + ' s)' : '';
    $('error').hidden = !msg;
  }

  let timer = 0, generation = 0;

  async function refresh() {
    clearTimeout(timer);
    const gen = ++generation;
    try {
      const d = await load();
      if (gen !== generation) return; // a newer refresh (a new token) started meanwhile
      $('auth').hidden = true;
      document.querySelector('main').hidden = false;
      $('forget').hidden = !token();
      showError('');
      render(d);
    } catch (e) {
      if (gen !== generation) return;
      if (e.status === 401) {
        showAuth(e.message);
        return; // until a token is entered
      }
      showError(e.message);
    }
    timer = setTimeout(refresh, REFRESH_MS);
  }

  $('token-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const t = $('token-input').value.trim();
    if (!t) return;
    sessionStorage.setItem(TOKEN_KEY, t);
    $('token-input').value = '';
    refresh();
  });
  $('forget').addEventListener('click', () => {
    sessionStorage.removeItem(TOKEN_KEY);
    refresh();
  });
  window.addEventListener('hashchange', () => {
    tokenFromFragment();
    refresh();
  });

  tokenFromFragment();
  refresh();
})();
