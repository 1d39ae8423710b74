-- name: active_hit_lineage
-- description: Which rounds, labels and models led to a hit: every task upstream of it, nearest first, with its active-learning round and step, the model or dataset version it made, and the labels it computed.
-- param: hit
WITH RECURSIVE up(node_kind, node_id, depth) AS (
  SELECT CAST('hit' AS VARCHAR(16)), CAST(:hit AS VARCHAR(64)), 0
  UNION
  SELECT CAST(CASE WHEN l.kind = 'input_of' THEN l.src_kind ELSE l.dst_kind END AS VARCHAR(16)),
         CAST(CASE WHEN l.kind = 'input_of' THEN l.src_id ELSE l.dst_id END AS VARCHAR(64)), up.depth + 1
  FROM lineage l JOIN up
    ON (l.kind <> 'input_of' AND l.src_kind = up.node_kind AND l.src_id = up.node_id)
    OR (l.kind = 'input_of' AND l.dst_kind = up.node_kind AND l.dst_id = up.node_id)
  WHERE up.depth < 80
),
upstream AS (SELECT node_id AS task_id, MIN(depth) AS depth FROM up WHERE node_kind = 'task' GROUP BY node_id)
SELECT u.depth,
       CASE WHEN t.key LIKE 'active/r%' THEN CAST(SUBSTR(t.key, 9, 2) AS INTEGER) END AS round,
       CASE WHEN t.key LIKE 'active/%' THEN SUBSTR(t.key, 8) ELSE t.key END AS step,
       t.kind,
       (SELECT MIN(mo.name) FROM models mo WHERE mo.task_id = t.id) AS model_made,
       (SELECT MIN(d.name || ' v' || CAST(d.version AS VARCHAR(10))) FROM lineage l
          JOIN datasets d ON CAST(d.id AS VARCHAR(64)) = l.src_id
         WHERE l.kind = 'output_of' AND l.src_kind = 'dataset' AND l.dst_kind = 'task' AND l.dst_id = t.id)
         AS dataset_made,
       (SELECT COUNT(*) FROM labels lb WHERE lb.task_id = t.id AND lb.status = 'ok') AS labels_ok,
       (SELECT COUNT(*) FROM labels lb WHERE lb.task_id = t.id AND lb.status <> 'ok') AS labels_failed
FROM upstream u JOIN tasks t ON t.id = u.task_id
ORDER BY u.depth, t.key
