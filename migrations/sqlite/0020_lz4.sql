-- mailintake schema v3, migration 0020 (SQLite): nothing to do. Its PostgreSQL twin
-- (migrations/postgres/0020_lz4.sql) has the server compress large values with lz4 instead of
-- pglz; SQLite stores values as they are. It exists so both backends count the same migrations.
-- Only ASCII in this file.

SELECT 1;
