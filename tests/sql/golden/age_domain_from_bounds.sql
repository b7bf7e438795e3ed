WITH "__dp_rows" AS (
  SELECT
    "visits"."user_id" AS "__dp_unit",
    age AS "__dp_k0",
    1 AS "__dp_v0"
  FROM visits
  WHERE
    age BETWEEN 30 AND 32
    AND NOT "visits"."user_id" IS NULL
    AND age IN (
      18,
      19,
      20,
      21,
      22,
      23,
      24,
      25,
      26,
      27,
      28,
      29,
      30,
      31,
      32,
      33,
      34,
      35,
      36,
      37,
      38,
      39,
      40,
      41,
      42,
      43,
      44,
      45,
      46,
      47,
      48,
      49,
      50,
      51,
      52,
      53,
      54,
      55,
      56,
      57,
      58,
      59,
      60,
      61,
      62,
      63,
      64,
      65,
      66,
      67,
      68,
      69,
      70,
      71,
      72,
      73,
      74,
      75,
      76,
      77,
      78,
      79,
      80,
      81,
      82,
      83,
      84,
      85,
      86,
      87,
      88,
      89,
      90
    )
), "__dp_groups" AS (
  SELECT
    "__dp_unit",
    "__dp_k0",
    COALESCE(SUM("__dp_v0"), 0) AS "__dp_s0"
  FROM __dp_rows
  GROUP BY
    "__dp_unit",
    "__dp_k0"
), "__dp_kept" AS (
  SELECT
    *
  FROM (
    SELECT
      *,
      ROW_NUMBER() OVER (PARTITION BY "__dp_unit" ORDER BY HASH("__dp_unit", "__dp_k0", ?)) AS "__dp_rank"
    FROM __dp_groups
  ) AS __dp_ranked
  WHERE
    "__dp_rank" <= 20
), "__dp_contrib" AS (
  SELECT
    "__dp_k0",
    CAST(ROUND(
      CASE
        WHEN SUM(ABS("__dp_s0")) OVER (PARTITION BY "__dp_unit") <= 20
        THEN "__dp_s0"
        ELSE CAST(20.0 AS DOUBLE) * "__dp_s0" / SUM(ABS("__dp_s0")) OVER (PARTITION BY "__dp_unit")
      END * CAST(64.0 AS DOUBLE)
    ) AS BIGINT) AS "__dp_s0"
  FROM __dp_kept
)
SELECT
  "__dp_k0",
  CAST(COALESCE(SUM("__dp_s0"), 0) AS BIGINT) AS "__dp_s0"
FROM __dp_contrib
GROUP BY
  "__dp_k0"
