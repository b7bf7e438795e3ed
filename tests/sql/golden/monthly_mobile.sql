WITH "__dp_rows" AS (
  SELECT
    "visits"."user_id" AS "__dp_unit",
    TRY(DATE_TRUNC('MONTH', visit_date)) AS "__dp_k0",
    1 AS "__dp_v0"
  FROM visits
  WHERE
    device = 'mobile'
    AND NOT "visits"."user_id" IS NULL
    AND TRY(DATE_TRUNC('MONTH', visit_date)) IN (
      CAST('2024-01-01 00:00:00' AS TIMESTAMP),
      CAST('2024-02-01 00:00:00' AS TIMESTAMP),
      CAST('2024-03-01 00:00:00' AS TIMESTAMP),
      CAST('2024-04-01 00:00:00' AS TIMESTAMP),
      CAST('2024-05-01 00:00:00' AS TIMESTAMP),
      CAST('2024-06-01 00:00:00' AS TIMESTAMP),
      CAST('2024-07-01 00:00:00' AS TIMESTAMP),
      CAST('2024-08-01 00:00:00' AS TIMESTAMP),
      CAST('2024-09-01 00:00:00' AS TIMESTAMP),
      CAST('2024-10-01 00:00:00' AS TIMESTAMP),
      CAST('2024-11-01 00:00:00' AS TIMESTAMP),
      CAST('2024-12-01 00:00:00' AS TIMESTAMP)
    )
), "__dp_groups" AS (
  SELECT
    "__dp_unit",
    "__dp_k0",
    COUNT(*) AS "__dp_s0"
  FROM __dp_rows
  GROUP BY
    "__dp_unit",
    "__dp_k0"
), "__dp_units" AS (
  SELECT
    "__dp_unit",
    SUM("__dp_s0") AS "__dp_t0"
  FROM __dp_groups
  GROUP BY
    "__dp_unit"
), "__dp_joined" AS (
  SELECT
    *
  FROM __dp_groups
  JOIN __dp_units
    USING (__dp_unit)
), "__dp_contrib" AS (
  SELECT
    "__dp_k0",
    CAST(ROUND(
      CASE
        WHEN "__dp_t0" <= 20
        THEN "__dp_s0"
        ELSE CAST(20.0 AS DOUBLE) * "__dp_s0" / "__dp_t0"
      END * CAST(64.0 AS DOUBLE)
    ) AS BIGINT) AS "__dp_s0"
  FROM __dp_joined
)
SELECT
  "__dp_k0",
  COALESCE(SUM("__dp_s0"), 0) AS "__dp_s0"
FROM __dp_contrib
GROUP BY
  "__dp_k0"
