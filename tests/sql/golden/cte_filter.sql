WITH us AS (
  SELECT
    *
  FROM visits
  WHERE
    country = 'US'
), "__dp_rows" AS (
  SELECT
    "us"."user_id" AS "__dp_unit",
    device AS "__dp_k0",
    1 AS "__dp_v0"
  FROM us
  WHERE
    NOT "us"."user_id" IS NULL AND device IN ('desktop', 'mobile', 'tablet', 'tv')
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
