// Exercises every endpoint of server.js running behind cacheside and checks the answers.
// Exits non-zero on the first failed check. Used by run.sh; needs:
//   APP_URL        the app, e.g. http://127.0.0.1:3000
//   ADMIN_URL      cacheside's admin listener, e.g. http://127.0.0.1:9380 (/metrics)
//   REDIS_PORT     cacheside's Redis port (to read the view counter as the app would)
//   DATABASE_URL   PostgreSQL, for a write made by "another service" (bypassing the app)
'use strict';

const assert = require('node:assert/strict');
const { createClient } = require('redis');
const { Client } = require('pg');

const APP = process.env.APP_URL;
const ADMIN = process.env.ADMIN_URL;
const results = [];
let step = 'start';

function pass(msg) {
  results.push(msg);
  console.log(`  ok  ${msg}`);
}

async function http(method, path, body) {
  const res = await fetch(APP + path, {
    method,
    headers: body === undefined ? {} : { 'content-type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  return { status: res.status, body: text === '' ? null : JSON.parse(text) };
}

// Sum of the samples of `name` whose labels include every `labels` pair.
async function metric(name, labels = {}) {
  const text = await (await fetch(`${ADMIN}/metrics`)).text();
  let sum = 0;
  for (const line of text.split('\n')) {
    const m = line.match(/^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)$/);
    if (!m || m[1] !== name) continue;
    const have = m[2] || '';
    if (Object.entries(labels).every(([k, v]) => have.includes(`${k}="${v}"`))) {
      sum += Number(m[3]);
    }
  }
  return sum;
}

async function counters() {
  return {
    productQueries: await metric('cacheside_origin_queries_total', { mapping: 'product' }),
    categoryQueries: await metric('cacheside_origin_queries_total', { mapping: 'category' }),
    hotHits: await metric('cacheside_cache_gets_total', { tier: 'hot', result: 'hit' }),
  };
}

// Retries `check` (which throws while the condition does not hold) until it passes or
// `timeoutMs` is over; returns how long it took and whether the first try passed.
// Invalidation by notify is asynchronous: it lands a few milliseconds after the commit.
async function eventually(check, timeoutMs = 3000) {
  const start = Date.now();
  let tries = 0;
  for (;;) {
    tries += 1;
    try {
      await check();
      return { ms: Date.now() - start, firstTry: tries === 1 };
    } catch (err) {
      if (Date.now() - start > timeoutMs) throw err;
      await new Promise((r) => setTimeout(r, 5));
    }
  }
}

const ids = (list) => list.map((p) => p.id);

// Each GET /products/:id also counts a view, and the [[counter]] moves views to the row every
// 200 ms: that UPDATE is a row change whose NOTIFY rightly evicts the product and the lists
// holding it. A pair of reads such an eviction fell between is tried again (at most 5 times;
// `pair` gets the attempt's number); a pair without one must show the cache at work.
async function withoutRowChange(pair) {
  for (let attempt = 1; ; attempt++) {
    const n0 = await metric('cacheside_invalidations_total', { source: 'db_notify' });
    try {
      return await pair(attempt);
    } catch (err) {
      const n1 = await metric('cacheside_invalidations_total', { source: 'db_notify' });
      if (n1 === n0 || attempt >= 5) throw err;
    }
  }
}
// A product without its views: each GET counts one, and the [[counter]] flush (every 1 s)
// changes the row's views column (its NOTIFY evicts the cached row).
const sansViews = (p) => ({ ...p, views: undefined });
const lag = (e) => (e.firstTry ? 'on the first read' : `after ${e.ms} ms`);

async function main() {
  // Health.
  step = 'Health.';
  let r = await http('GET', '/health');
  assert.equal(r.status, 200, `GET /health: ${JSON.stringify(r.body)}`);
  assert.equal(r.body.status, 'ok');
  pass('GET /health is ok');

  // Read a product twice: the second read is answered by cacheside without a query.
  step = 'Read a product twice: the second read is answered by cacheside without a query.';
  const [c0, c1] = await withoutRowChange(async () => {
    const c0 = await counters();
    r = await http('GET', '/products/1');
    assert.equal(r.status, 200);
    assert.equal(r.body.id, 1);
    assert.equal(r.body.name, 'Mechanical keyboard');
    assert.equal(r.body.category, 'electronics');
    const c1 = await counters();
    const second = await http('GET', '/products/1');
    const c2 = await counters();
    assert.deepEqual(second.body, r.body, 'the second read returns the same product');
    assert.equal(c2.productQueries - c1.productQueries, 0, 'second read ran a Postgres query');
    assert.ok(c2.hotHits - c1.hotHits >= 1, 'second read was not a hot-tier hit');
    return [c0, c1];
  });
  pass(
    `GET /products/1 twice: first read ${c1.productQueries - c0.productQueries} Postgres ` +
      `queries (${c1.productQueries === c0.productQueries ? 'warmed by [[warm]]' : 'loaded on the miss'}), ` +
      'second read 0 queries, served from the hot tier'
  );

  // An unknown product: 404 (remembered as "not found" by cacheside).
  step = 'An unknown product: 404 (remembered as "not found" by cacheside).';
  r = await http('GET', '/products/100');
  assert.equal(r.status, 404);
  assert.deepEqual(r.body, { error: 'Product not found' });
  pass('GET /products/100 (no such row) is 404');

  // Category list, read twice: one query, then none (hot tier).
  step = 'Category list, read twice: one query, then none (hot tier).';
  await withoutRowChange(async (attempt) => {
    const q0 = await counters();
    r = await http('GET', '/products/category/electronics');
    assert.equal(r.status, 200);
    assert.deepEqual(ids(r.body), [3, 2, 1], 'electronics, newest first');
    const q1 = await counters();
    const again = await http('GET', '/products/category/electronics');
    const q2 = await counters();
    assert.deepEqual(again.body, r.body);
    // A retry may find the list already loaded by the try before it.
    const first = q1.categoryQueries - q0.categoryQueries;
    assert.ok(first === 1 || (attempt > 1 && first === 0), `first list read ran ${first} queries`);
    assert.equal(q2.categoryQueries - q1.categoryQueries, 0, 'second list read ran a query');
  });
  pass('GET /products/category/electronics is [3, 2, 1]; 1 query, then 0 (hot tier)');

  r = await http('GET', '/products/category/toys');
  assert.equal(r.status, 200);
  assert.deepEqual(r.body, []);
  pass('GET /products/category/toys (empty) is []');

  // Create: the "not found" of product 100 and the electronics list are evicted by notify.
  step = 'Create: the "not found" of product 100 and the electronics list are evicted by notify.';
  r = await http('POST', '/products', {
    id: 100,
    name: 'Desk lamp',
    price: 45,
    category: 'electronics',
  });
  assert.equal(r.status, 201, `POST /products: ${JSON.stringify(r.body)}`);
  const created = r.body;
  assert.equal(created.id, 100);
  // Each GET counts a view, and the [[counter]] flush (every 1 s) then changes the row's views
  // (its NOTIFY evicts the cached row): views are the counter's, checked below.
  const n0 = await counters();
  let e = await eventually(async () => {
    const got = await http('GET', '/products/100');
    assert.equal(got.status, 200);
    assert.deepEqual(sansViews(got.body), sansViews(created), 'GET returns what POST returned');
  });
  const n1 = await counters();
  assert.ok(n1.productQueries - n0.productQueries >= 1, 'the cold read ran no query');
  await withoutRowChange(async () => {
    await http('GET', '/products/100');
    const w1 = await counters();
    assert.deepEqual(sansViews((await http('GET', '/products/100')).body), sansViews(created));
    const w2 = await counters();
    assert.equal(w2.productQueries - w1.productQueries, 0, 'the warm read ran a query');
  });
  pass(
    `POST /products created 100; GET /products/100 shows it ${lag(e)} ` +
      `(${n1.productQueries - n0.productQueries} query), the next GET 0 queries`
  );
  e = await eventually(async () => {
    const got = await http('GET', '/products/category/electronics');
    assert.deepEqual(ids(got.body), [100, 3, 2, 1]);
  });
  pass(`the electronics list shows product 100 ${lag(e)}`);

  // Update: the next reads show it (notify evicted product:100 from the hot tier and Redis).
  step = 'Update: the next reads show it (notify evicted product:100 from the hot tier and Redis).';
  r = await http('PUT', '/products/100', { name: 'Desk lamp (LED)', price: 49.5 });
  assert.equal(r.status, 200);
  assert.equal(r.body.name, 'Desk lamp (LED)');
  assert.equal(Number(r.body.price), 49.5);
  const updated = r.body;
  e = await eventually(async () => {
    const got = await http('GET', '/products/100');
    assert.deepEqual(sansViews(got.body), sansViews(updated));
  });
  pass(`PUT /products/100 renamed it; GET /products/100 shows the update ${lag(e)}`);

  r = await http('PUT', '/products/999', { name: 'nothing' });
  assert.equal(r.status, 404);
  pass('PUT /products/999 (no such row) is 404');

  // Move a product to another category: both lists change.
  step = 'Move a product to another category: both lists change.';
  await http('GET', '/products/category/office'); // cache the (empty) office list first
  r = await http('PUT', '/products/2', { category: 'office' });
  assert.equal(r.status, 200);
  assert.equal(r.body.category, 'office');
  e = await eventually(async () => {
    const el = await http('GET', '/products/category/electronics');
    const of = await http('GET', '/products/category/office');
    const p2 = await http('GET', '/products/2');
    assert.deepEqual(ids(el.body), [100, 3, 1]);
    assert.deepEqual(ids(of.body), [2]);
    assert.equal(p2.body.category, 'office');
  });
  pass(`PUT /products/2 moved it to office; both category lists show it ${lag(e)}`);

  // A write that bypasses the app entirely (another service, psql) is evicted the same way.
  step = 'A write that bypasses the app entirely (another service, psql) is evicted the same way.';
  const db = new Client({ connectionString: process.env.DATABASE_URL });
  await db.connect();
  await db.query('UPDATE products SET price = 79.00 WHERE id = 1');
  await db.end();
  e = await eventually(async () => {
    const got = await http('GET', '/products/1');
    assert.equal(Number(got.body.price), 79);
  });
  pass(`an UPDATE made straight in PostgreSQL shows in GET /products/1 ${lag(e)}`);

  // Several products at once (one MGET).
  step = 'Several products at once (one MGET).';
  r = await http('GET', '/products?ids=1,3,999,100');
  assert.equal(r.status, 200);
  assert.deepEqual(ids(r.body), [1, 3, 100]);
  pass('GET /products?ids=1,3,999,100 returns 1, 3, 100');

  // Delete: the next read is 404, and the list drops it.
  step = 'Delete: the next read is 404, and the list drops it.';
  r = await http('DELETE', '/products/100');
  assert.equal(r.status, 204);
  e = await eventually(async () => {
    const got = await http('GET', '/products/100');
    assert.equal(got.status, 404);
    const el = await http('GET', '/products/category/electronics');
    assert.deepEqual(ids(el.body), [3, 1]);
  });
  pass(`DELETE /products/100; GET is 404 and the list drops it ${lag(e)}`);

  // Views: every successful GET /products/:id is one INCR product:{id}:views.
  step = 'Views: every successful GET /products/:id is one INCR product:{id}:views.';
  const redis = createClient({ socket: { host: '127.0.0.1', port: Number(process.env.REDIS_PORT) } });
  await redis.connect();
  const pg = new Client({ connectionString: process.env.DATABASE_URL });
  await pg.connect();
  const dbViews = async () =>
    Number((await pg.query('SELECT views FROM products WHERE id = 3')).rows[0].views);
  // Deltas counted before this step (reads above) may still be on their way to the column.
  await new Promise((r) => setTimeout(r, 1000));
  const dbBefore = await dbViews();
  const before = Number((await redis.get('product:3:views')) || 0);
  for (let i = 0; i < 5; i++) {
    assert.equal((await http('GET', '/products/3')).status, 200);
  }
  const after = Number(await redis.get('product:3:views'));
  assert.equal((await http('GET', '/products/999')).status, 404);
  const missing = await redis.get('product:999:views');
  await redis.quit();
  assert.equal(after - before, 5, 'five reads, five views');
  assert.equal(missing, null, 'a 404 counts no view');
  pass(`5 x GET /products/3 counted 5 views (product:3:views ${before} -> ${after})`);

  // The [[counter]] moves the 5 views to the `views` column, exactly once.
  step = 'The [[counter]] moves the views to products.views.';
  const c = await eventually(async () => {
    assert.equal((await dbViews()) - dbBefore, 5, 'five views in the database');
  });
  await new Promise((r) => setTimeout(r, 600));
  assert.equal((await dbViews()) - dbBefore, 5, 'and no more after further flushes');
  await pg.end();
  pass(`products.views of 3 rose by exactly 5, ${c.ms} ms after the last view`);

  const t = await counters();
  console.log(
    `  ${results.length} checks passed; Postgres queries by cacheside: product ${t.productQueries}, ` +
      `category ${t.categoryQueries}; hot-tier hits ${t.hotHits}`
  );
}

main().catch((err) => {
  console.error(`  FAIL (${step}) ${err.message}`);
  if (err.actual !== undefined || err.expected !== undefined) {
    console.error(`       actual:   ${JSON.stringify(err.actual)}`);
    console.error(`       expected: ${JSON.stringify(err.expected)}`);
  }
  process.exit(1);
});
