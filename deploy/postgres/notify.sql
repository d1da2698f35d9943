-- Row-change triggers for the seeds' products service (the mappings in the README's example),
-- as `cacheside db install-notify --print` writes them. Run once per database, e.g.
--   psql "$DATABASE_URL" -f deploy/postgres/notify.sql
-- or let `cacheside db install-notify` run it (it uses postgres.url).
-- cacheside: NOTIFY 'cacheside' with the key columns of rows that change.
CREATE OR REPLACE FUNCTION cacheside_notify() RETURNS trigger LANGUAGE plpgsql AS $cacheside$
DECLARE
  changed jsonb := '[]'::jsonb;
  r jsonb;
  one jsonb;
  i int;
BEGIN
  IF TG_OP = 'TRUNCATE' THEN
    PERFORM pg_notify('cacheside', json_build_object('s', TG_TABLE_SCHEMA, 't', TG_TABLE_NAME, 'op', TG_OP)::text);
    RETURN NULL;
  END IF;
  FOREACH r IN ARRAY ARRAY[
    CASE WHEN TG_OP <> 'INSERT' THEN to_jsonb(OLD) END,
    CASE WHEN TG_OP <> 'DELETE' THEN to_jsonb(NEW) END
  ] LOOP
    IF r IS NOT NULL THEN
      one := '{}'::jsonb;
      FOR i IN 0 .. TG_NARGS - 1 LOOP
        one := one || jsonb_build_object(TG_ARGV[i], r -> TG_ARGV[i]);
      END LOOP;
      changed := changed || jsonb_build_array(one);
    END IF;
  END LOOP;
  PERFORM pg_notify('cacheside', json_build_object('s', TG_TABLE_SCHEMA, 't', TG_TABLE_NAME, 'op', TG_OP, 'r', changed)::text);
  RETURN NULL;
END
$cacheside$;
CREATE OR REPLACE TRIGGER cacheside_notify_products AFTER INSERT OR UPDATE OR DELETE ON products
  FOR EACH ROW EXECUTE FUNCTION cacheside_notify('category', 'id');
CREATE OR REPLACE TRIGGER cacheside_notify_products_truncate AFTER TRUNCATE ON products
  FOR EACH STATEMENT EXECUTE FUNCTION cacheside_notify();
