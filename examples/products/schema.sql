-- The seeds' products table (the columns their queries use: id, name, price, category,
-- views, created_at, updated_at) and a few rows.
CREATE TABLE products (
    id          integer       PRIMARY KEY,
    name        text          NOT NULL,
    price       numeric(10,2) NOT NULL,
    category    text          NOT NULL,
    views       bigint        NOT NULL DEFAULT 0,
    created_at  timestamptz   NOT NULL DEFAULT now(),
    updated_at  timestamptz   NOT NULL DEFAULT now()
);

-- The category list query: WHERE category = $1 ORDER BY created_at DESC.
CREATE INDEX products_category_created_at ON products (category, created_at DESC);

INSERT INTO products (id, name, price, category, views, created_at) VALUES
    (1, 'Mechanical keyboard',  89.00, 'electronics', 420, now() - interval '5 days'),
    (2, 'USB-C hub',            34.50, 'electronics', 310, now() - interval '4 days'),
    (3, 'Noise-cancelling headphones', 199.99, 'electronics', 150, now() - interval '3 days'),
    (4, 'Espresso cup set',     24.00, 'kitchen',      75, now() - interval '2 days'),
    (5, 'Chef''s knife',        59.90, 'kitchen',      60, now() - interval '1 day'),
    (6, 'Trail running shoes', 129.00, 'sports',       40, now() - interval '6 hours');
