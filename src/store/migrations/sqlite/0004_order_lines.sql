-- Order lines read on their own (entity 'order_line') name the order they belong to by its
-- source id in the same system; the store attaches them to that order when it is read.
ALTER TABLE records ADD COLUMN order_id TEXT;
CREATE INDEX records_by_order ON records (entity, system, order_id) WHERE order_id IS NOT NULL;
