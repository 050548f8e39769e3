-- Which orders have a line (embedded or standalone) on which SKU, keyed like a standalone
-- line's order: `(system, order source id)`. Finding the open orders that compete for a SKU's
-- stock starts here instead of reading every open order. Rows are only added: a line that
-- changes its SKU leaves a stale row, and readers check the lines themselves.
CREATE TABLE order_skus (
    sku      TEXT COLLATE "C" NOT NULL,
    system   TEXT COLLATE "C" NOT NULL,
    order_id TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (sku, system, order_id)
);

INSERT INTO order_skus (sku, system, order_id)
SELECT DISTINCT l ->> 'sku', o.system, o.source_id
FROM records o,
     jsonb_array_elements(CASE WHEN jsonb_typeof(o.body::jsonb -> 'lines') = 'array'
                               THEN o.body::jsonb -> 'lines' ELSE '[]'::jsonb END) l
WHERE o.entity = 'order' AND l ->> 'sku' IS NOT NULL
ON CONFLICT DO NOTHING;

INSERT INTO order_skus (sku, system, order_id)
SELECT DISTINCT li.body::jsonb #>> '{line,sku}', li.system, li.order_id
FROM records li
WHERE li.entity = 'order_line' AND li.order_id IS NOT NULL
  AND li.body::jsonb #>> '{line,sku}' IS NOT NULL
ON CONFLICT DO NOTHING;
