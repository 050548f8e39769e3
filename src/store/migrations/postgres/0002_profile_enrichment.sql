-- The enriched profile looks records up by SKU (stock, supplier lead times, products) and
-- finds the open orders competing for a SKU's stock. Both go through expression indexes on
-- the JSON body, so no column has to be kept in step with it.
CREATE INDEX records_by_sku ON records ((body::jsonb ->> 'sku'), entity);
CREATE INDEX records_by_order_status ON records (entity, (body::jsonb ->> 'status'));
