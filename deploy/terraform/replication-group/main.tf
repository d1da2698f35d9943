# An ElastiCache replication group for cacheside to front: cluster mode disabled, Multi-AZ with
# automatic failover, encryption in transit (cacheside connects with rediss://) and at rest,
# an AUTH token read from Secrets Manager, and allkeys-lru eviction.

data "aws_secretsmanager_secret_version" "auth_token" {
  secret_id = var.auth_token_secret_id
}

resource "aws_elasticache_subnet_group" "this" {
  name        = var.name
  description = "Subnets of ${var.name}"
  subnet_ids  = var.subnet_ids
  tags        = var.tags
}

resource "aws_elasticache_parameter_group" "this" {
  name        = "${var.name}-params"
  family      = var.parameter_group_family
  description = "${var.name}: evict any key, least recently used first, when memory is full"
  tags        = var.tags

  parameter {
    name  = "maxmemory-policy"
    value = "allkeys-lru"
  }
}

resource "aws_security_group" "cache" {
  name        = "${var.name}-cache"
  description = "ElastiCache ${var.name}: Redis from the app only"
  vpc_id      = var.vpc_id
  tags        = var.tags
}

resource "aws_vpc_security_group_ingress_rule" "redis_from_app" {
  security_group_id            = aws_security_group.cache.id
  referenced_security_group_id = var.app_security_group_id
  ip_protocol                  = "tcp"
  from_port                    = 6379
  to_port                      = 6379
  description                  = "Redis over TLS from the app's security group"
  tags                         = var.tags
}

resource "aws_elasticache_replication_group" "this" {
  replication_group_id = var.name
  description          = "Redis behind cacheside for ${var.name}"
  engine               = var.engine
  engine_version       = var.engine_version
  node_type            = var.node_type
  num_cache_clusters   = var.num_cache_clusters
  port                 = 6379
  parameter_group_name = aws_elasticache_parameter_group.this.name
  subnet_group_name    = aws_elasticache_subnet_group.this.name
  security_group_ids   = [aws_security_group.cache.id]

  automatic_failover_enabled = true
  multi_az_enabled           = true

  transit_encryption_enabled = true
  at_rest_encryption_enabled = true
  # The token is also kept in the Terraform state: keep the state encrypted.
  auth_token = data.aws_secretsmanager_secret_version.auth_token.secret_string
  # ROTATE accepts the old and the new token during a rotation, so sidecars reconnect with
  # either while the Kubernetes Secret catches up.
  auth_token_update_strategy = "ROTATE"

  snapshot_retention_limit = var.snapshot_retention_limit
  apply_immediately        = false
  tags                     = var.tags
}
