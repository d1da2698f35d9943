// The product service of the seeds (Express + node-redis v4 + pg), with its caching handed to
// cacheside. The app's Redis client points at cacheside (default 127.0.0.1:6380) instead of at
// Redis, and the cache code shrinks to plain Redis reads:
//
// - reads are a GET: on a miss cacheside loads the row from PostgreSQL through the
//   [[mapping]] rules in proxy.toml (`product:{id}`, `products:category:{category}`), fills
//   Redis with a TTL, and answers; hot keys are answered from its in-process tier;
// - writes go to PostgreSQL and nothing else: with `postgres.notify = true` the triggers
//   installed by `cacheside db install-notify` evict `product:{id}` and the category lists of
//   the row's old and new category (hot tier and Redis), whoever made the change;
// - view counts are a plain INCR.
//
// Gone from the seed: setEx after every read, write-through on create/update, DEL on
// update/delete, invalidateCategoryCache, the cache-warming loop (a [[warm]] rule instead) and
// the "sync every 100 views" code.
'use strict';

const express = require('express');
const { createClient } = require('redis');
const { Pool } = require('pg');

const config = {
  port: Number(process.env.PORT || 3000),
  // cacheside, not Redis: the app speaks plain Redis to it.
  redis: {
    host: process.env.REDIS_HOST || '127.0.0.1',
    port: Number(process.env.REDIS_PORT || 6380),
  },
  postgres: {
    host: process.env.DB_HOST || '127.0.0.1',
    port: Number(process.env.DB_PORT || 5432),
    database: process.env.DB_NAME || 'products_db',
    user: process.env.DB_USER || 'app',
    password: process.env.DB_PASSWORD,
    max: 20,
  },
};

const redis = createClient({ socket: config.redis });
redis.on('error', (err) => console.error('Redis error:', err.message));

const pgPool = new Pool(config.postgres);

// --- Reads: the cache-aside code is one GET. -----------------------------------------------

async function getProduct(productId) {
  // A miss is loaded from PostgreSQL by cacheside (mapping "product"); nil means no such row.
  const cached = await redis.get(`product:${productId}`);
  return cached === null ? null : JSON.parse(cached);
}

async function getMultipleProducts(productIds) {
  // One MGET; cacheside loads all the misses of the mapping with one `id = ANY($1)` query.
  const cached = await redis.mGet(productIds.map((id) => `product:${id}`));
  return cached.filter((v) => v !== null).map((v) => JSON.parse(v));
}

async function getProductsByCategory(category) {
  // Mapping "category" (json_array): always a JSON array, "[]" for a category with no products.
  // A key capture is one key segment, so a category containing ':' is not the mapping's key.
  const cached = await redis.get(`products:category:${category}`);
  return cached === null ? [] : JSON.parse(cached);
}

// View counts stay in Redis. A [[counter]] rule (landing separately in cacheside) will sync
// `product:{id}:views` to the `views` column (the [[counter]] in proxy.toml), replacing the
// seed's "UPDATE ... views + 100 every 100 views" code.
async function incrementProductViews(productId) {
  return redis.incr(`product:${productId}:views`);
}

// --- Writes: PostgreSQL only. ----------------------------------------------------------------
//
// No DEL and no setEx: the notify triggers evict the keys the row maps to, in every sidecar,
// a few milliseconds after the commit. (An app that needs to read its own write at once may
// still send `DEL product:<id>` after the commit; cacheside handles it like any write.)
//
// Rows are returned as Postgres renders them (row_to_json), the same rendering cacheside gives
// GET, so a product looks the same whichever endpoint returns it.

async function createProduct(product) {
  const result = await pgPool.query(
    `INSERT INTO products (id, name, price, category) VALUES ($1, $2, $3, $4)
     RETURNING row_to_json(products) AS product`,
    [product.id, product.name, product.price, product.category]
  );
  return result.rows[0].product;
}

async function updateProduct(productId, updates) {
  // As the seed: name and price. A category may also be given (the seed could not move a
  // product; with notify both the old and the new category list are evicted).
  const result = await pgPool.query(
    `UPDATE products
        SET name = COALESCE($1, name), price = COALESCE($2, price),
            category = COALESCE($3, category), updated_at = NOW()
      WHERE id = $4
      RETURNING row_to_json(products) AS product`,
    [updates.name ?? null, updates.price ?? null, updates.category ?? null, productId]
  );
  return result.rows.length === 0 ? null : result.rows[0].product;
}

async function deleteProduct(productId) {
  await pgPool.query('DELETE FROM products WHERE id = $1', [productId]);
}

// --- Express API: the seed's endpoints and JSON shapes. ----------------------------------

const app = express();
app.use(express.json());

const isId = (s) => /^[0-9]+$/.test(s);

// Get product (cached), counting the view.
app.get('/products/:id', async (req, res) => {
  try {
    const product = await getProduct(req.params.id);
    if (!product) {
      return res.status(404).json({ error: 'Product not found' });
    }
    await incrementProductViews(req.params.id);
    res.json(product);
  } catch (error) {
    res.status(500).json({ error: error.message });
  }
});

// Get several products: GET /products?ids=1,2,3 (the seed's getMultipleProducts).
app.get('/products', async (req, res) => {
  try {
    const ids = String(req.query.ids || '').split(',').filter(isId);
    res.json(ids.length === 0 ? [] : await getMultipleProducts(ids));
  } catch (error) {
    res.status(500).json({ error: error.message });
  }
});

// Create product.
app.post('/products', async (req, res) => {
  try {
    const product = await createProduct(req.body);
    res.status(201).json(product);
  } catch (error) {
    res.status(500).json({ error: error.message });
  }
});

// Update product.
app.put('/products/:id', async (req, res) => {
  try {
    const product = await updateProduct(req.params.id, req.body);
    if (!product) {
      return res.status(404).json({ error: 'Product not found' });
    }
    res.json(product);
  } catch (error) {
    res.status(500).json({ error: error.message });
  }
});

// Delete product.
app.delete('/products/:id', async (req, res) => {
  try {
    await deleteProduct(req.params.id);
    res.status(204).send();
  } catch (error) {
    res.status(500).json({ error: error.message });
  }
});

// Get by category (cached).
app.get('/products/category/:category', async (req, res) => {
  try {
    res.json(await getProductsByCategory(req.params.category));
  } catch (error) {
    res.status(500).json({ error: error.message });
  }
});

// Health: cacheside (and through it Redis) and PostgreSQL answer.
app.get('/health', async (req, res) => {
  try {
    await redis.ping();
    await pgPool.query('SELECT 1');
    res.json({ status: 'ok' });
  } catch (error) {
    res.status(503).json({ status: 'unavailable', error: error.message });
  }
});

async function main() {
  await redis.connect();
  const server = app.listen(config.port, '127.0.0.1', () => {
    console.log(`Server running on port ${config.port}`);
  });
  const stop = () => {
    server.close();
    Promise.allSettled([redis.quit(), pgPool.end()]).then(() => process.exit(0));
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
