"""The data contract: every path, file format and provenance attribute lives here.

Layout (relative to the results root, see docs/data-contract.md, CONTRACT_VERSION):

    {dataset}/encoders/{encoder}.pt                               trained encoder state (torch)
    {dataset}/embeddings/{encoder}/{split}/shard-{NNNNN}.h5      features, labels, indices
    {dataset}/embeddings/{encoder}/{split}/index.json            manifest of the shards (written last)
    {dataset}/scores/{encoder}/{ranker}/class-{c}.h5             test x train score matrix, topk
    {dataset}/support/queries.h5                                 sampled test images, flip classes, retrain data
    {dataset}/support/{encoder}/{ranker}/{metric}/{test_index}.json   one answer
    {dataset}/support/{encoder}/{ranker}/{metric}.json           gather of the answers (rule output)
    {dataset}/subsets/{purpose}/shard-{NNNNN}.h5                 models trained on random subsets: masks, margins
    {dataset}/attributions/trak-checkpoints.pt                   the full-data models TRAK attributes (torch)
    {dataset}/attributions/trak.h5                               TRAK scores, every test x train image
    {dataset}/lds/{encoder}/{ranker}.json                        linear datamodeling score of one method
    {dataset}/report/{support.csv, lds.csv, overlap.csv, cost.csv, report.md, support_cdf.png, topk_grid.png}
    {dataset}/report/inputs.json                                 the report's input lists (workflow manifest)
    {dataset}/export/                                            the evaluation problem for outside methods
                                                                 (simattr.export; the `export` target)

Every write is atomic: a temporary file in the same folder, renamed into place when complete.

By role: paths (the templates, hashes and seeds), files (atomic writes, JSON, journals), h5 (the HDF5 formats).
Callers use `store.NAME`; this module gathers the three.
"""
from .files import Journal, atomic_dir, atomic_path, read_json, write_json, write_text
from .h5 import (
    MAX_RUN_READS,
    READ_BLOCK_ROWS,
    SCORE_EXTRAS,
    SHARD_ATTRS,
    EmbeddingRows,
    open_embeddings,
    provenance,
    read_arrays,
    read_embeddings,
    read_scores,
    read_shard,
    shard_meta,
    shard_ranges,
    write_arrays,
    write_embeddings,
    write_index,
    write_scores,
    write_shard,
)
from .paths import (
    ATTRIBUTIONS_DIR,
    BENCHMARK,
    CONTRACT_VERSION,
    EMBED_DIR,
    EMBED_INDEX,
    EMBED_SHARD,
    EMBEDDINGS_DIR,
    ENCODER_EMBED_DIR,
    ENCODER_STATE,
    ENCODERS_DIR,
    EXPORT_DIR,
    INDEX_NAME,
    LDS,
    LDS_DIR,
    LOG,
    METHOD_FIGURES,
    OUTSIDE_COST,
    OUTSIDE_SCORES,
    QUERIES,
    REPORT_DIR,
    REPORT_FILES,
    REPORT_MANIFEST,
    REPORT_MANIFEST_KEYS,
    SCORES,
    SCORES_DIR,
    SCORES_ROOT,
    SHARD_NAME,
    STORED,
    SUBMITIT_DIR,
    SUBSET_SHARD,
    SUBSETS_DIR,
    SUPPORT_ANSWER,
    SUPPORT_DIR,
    SUPPORT_GATHER,
    SUPPORT_ROOT,
    TRAK_CHECKPOINTS,
    TRAK_SCORES,
    answer_path,
    config_hash,
    fill,
    seed_from,
    usage_path,
)

__all__ = ['CONTRACT_VERSION', 'ENCODERS_DIR', 'ENCODER_STATE', 'EMBEDDINGS_DIR', 'ENCODER_EMBED_DIR', 'EMBED_DIR', 'INDEX_NAME', 'EMBED_INDEX', 'SHARD_NAME', 'EMBED_SHARD', 'SCORES_ROOT', 'SCORES_DIR', 'SCORES', 'SUPPORT_ROOT', 'QUERIES', 'SUPPORT_DIR', 'SUPPORT_ANSWER', 'SUPPORT_GATHER', 'SUBMITIT_DIR', 'SUBSETS_DIR', 'SUBSET_SHARD', 'ATTRIBUTIONS_DIR', 'TRAK_CHECKPOINTS', 'TRAK_SCORES', 'LDS_DIR', 'LDS', 'EXPORT_DIR', 'OUTSIDE_SCORES', 'OUTSIDE_COST', 'REPORT_DIR', 'REPORT_MANIFEST', 'METHOD_FIGURES', 'REPORT_FILES', 'BENCHMARK', 'LOG', 'STORED', 'REPORT_MANIFEST_KEYS', 'answer_path', 'config_hash', 'fill', 'usage_path', 'seed_from', 'atomic_path', 'atomic_dir', 'write_json', 'read_json', 'Journal', 'write_text', 'provenance', 'write_shard', 'SHARD_ATTRS', 'shard_meta', 'read_shard', 'shard_ranges', 'write_index', 'write_embeddings', 'read_embeddings', 'MAX_RUN_READS', 'READ_BLOCK_ROWS', 'EmbeddingRows', 'open_embeddings', 'write_scores', 'SCORE_EXTRAS', 'read_scores', 'write_arrays', 'read_arrays']
