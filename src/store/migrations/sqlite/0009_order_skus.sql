-- Which orders have a line (embedded or standalone) on which SKU, keyed like a standalone
-- line's order: `(system, order source id)`. Finding the open orders that compete for a SKU's
-- stock starts here instead of reading every open order. Rows are only added: a line that
-- changes its SKU leaves a stale row, and readers check the lines themselves.
CREATE TABLE order_skus (
    sku      TEXT NOT NULL,
    system   TEXT NOT NULL,
    order_id TEXT NOT NULL,
    PRIMARY KEY (sku, system, order_id)
) WITHOUT ROWID;

INSERT OR IGNORE INTO order_skus (sku, system, order_id)
SELECT json_extract(l.value, '$.sku'), o.system, o.source_id
FROM records o, json_each(o.body, '$.lines') l
WHERE o.entity = 'order' AND json_type(o.body, '$.lines') = 'array'
  AND json_extract(l.value, '$.sku') IS NOT NULL;

INSERT OR IGNORE INTO order_skus (sku, system, order_id)
SELECT json_extract(li.body, '$.line.sku'), li.system, li.order_id
FROM records li
WHERE li.entity = 'order_line' AND li.order_id IS NOT NULL
  AND json_extract(li.body, '$.line.sku') IS NOT NULL;
