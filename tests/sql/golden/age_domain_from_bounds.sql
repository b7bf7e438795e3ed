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
    COUNT(*) AS "__dp_s0"
  FROM __dp_rows
  GROUP BY
    "__dp_unit",
    "__dp_k0"
), "__dp_units" AS (
  SELECT
    "__dp_unit",
    COUNT(*) AS "__dp_ng",
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
), "__dp_kept" AS (
  SELECT
    "__dp_unit",
    "__dp_k0",
    "__dp_s0",
    "__dp_t0"
  FROM __dp_joined
  WHERE
    "__dp_ng" <= 20
  UNION ALL
  SELECT
    "__dp_unit",
    "__dp_k0",
    "__dp_s0",
    SUM("__dp_s0") OVER (PARTITION BY "__dp_unit") AS "__dp_t0"
  FROM (
    SELECT
      *
    FROM (
      SELECT
        *,
        ROW_NUMBER() OVER (PARTITION BY "__dp_unit" ORDER BY HASH("__dp_unit", "__dp_k0", $salt)) AS "__dp_rank"
      FROM __dp_joined
      WHERE
        "__dp_ng" > 20
    ) AS __dp_ranked
    WHERE
      "__dp_rank" <= 20
  ) AS __dp_chosen
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
  FROM __dp_kept
)
SELECT
  "__dp_k0",
  COALESCE(SUM("__dp_s0"), 0) AS "__dp_s0"
FROM __dp_contrib
GROUP BY
  "__dp_k0"
