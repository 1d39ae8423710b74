-- name: model_lineage
-- description: Everything upstream of a model (or, with kind, of a hit, dataset, trial, task or artifact): parent models, the trials it was promoted from, the tasks that made it and their input datasets and artifacts.
-- param: model
-- param: kind = model
WITH RECURSIVE up(node_kind, node_id, via, from_kind, from_id, depth) AS (
  SELECT CAST(:kind AS VARCHAR(16)), CAST(:model AS VARCHAR(64)), CAST('self' AS VARCHAR(16)),
         CAST(:kind AS VARCHAR(16)), CAST(:model AS VARCHAR(64)), 0
  UNION
  SELECT CAST(CASE WHEN l.kind = 'input_of' THEN l.src_kind ELSE l.dst_kind END AS VARCHAR(16)),
         CAST(CASE WHEN l.kind = 'input_of' THEN l.src_id ELSE l.dst_id END AS VARCHAR(64)),
         CAST(l.kind AS VARCHAR(16)), up.node_kind, up.node_id, up.depth + 1
  FROM lineage l JOIN up
    ON (l.kind <> 'input_of' AND l.src_kind = up.node_kind AND l.src_id = up.node_id)
    OR (l.kind = 'input_of' AND l.dst_kind = up.node_kind AND l.dst_id = up.node_id)
  WHERE up.depth < 30
)
SELECT MIN(depth) AS depth, node_kind, node_id, via, from_kind, from_id
FROM up GROUP BY node_kind, node_id, via, from_kind, from_id ORDER BY depth, node_kind, node_id
