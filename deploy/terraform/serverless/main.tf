# An ElastiCache Serverless cache for cacheside to front: TLS always, the cluster protocol
# (cacheside's upstream.mode = "cluster"), and IAM authentication for an ElastiCache user that
# the pod's IRSA role may connect as. Serverless fixes maxmemory-policy (volatile-lru); only
# its usage limits are set here.

data "aws_caller_identity" "current" {}
data "aws_partition" "current" {}
data "aws_region" "current" {}

resource "aws_security_group" "cache" {
  name        = "${var.name}-cache"
  description = "ElastiCache Serverless ${var.name}: Redis from the app only"
  vpc_id      = var.vpc_id
  tags        = var.tags
}

# 6379 serves reads and writes; 6380 serves reads from a replica in the client's zone.
resource "aws_vpc_security_group_ingress_rule" "redis_from_app" {
  for_each = toset(["6379", "6380"])

  security_group_id            = aws_security_group.cache.id
  referenced_security_group_id = var.app_security_group_id
  ip_protocol                  = "tcp"
  from_port                    = tonumber(each.value)
  to_port                      = tonumber(each.value)
  description                  = "Redis over TLS (${each.value}) from the app's security group"
  tags                         = var.tags
}

# A user group needs a user named "default": this one is switched off.
resource "aws_elasticache_user" "default" {
  user_id       = "${var.name}-default"
  user_name     = "default"
  engine        = var.engine
  access_string = "off -@all"
  tags          = var.tags

  authentication_mode {
    type = "no-password-required"
  }
}

resource "aws_elasticache_user" "cacheside" {
  user_id       = var.iam_user_id
  user_name     = var.iam_user_id
  engine        = var.engine
  access_string = "on ~* &* +@all"
  tags          = var.tags

  authentication_mode {
    type = "iam"
  }
}

resource "aws_elasticache_user_group" "this" {
  user_group_id = var.name
  engine        = var.engine
  user_ids      = [aws_elasticache_user.default.user_id, aws_elasticache_user.cacheside.user_id]
  tags          = var.tags
}

resource "aws_elasticache_serverless_cache" "this" {
  name                 = var.name
  description          = "Redis behind cacheside for ${var.name}"
  engine               = var.engine
  major_engine_version = var.major_engine_version
  subnet_ids           = var.subnet_ids
  security_group_ids   = [aws_security_group.cache.id]
  user_group_id        = aws_elasticache_user_group.this.user_group_id
  tags                 = var.tags

  cache_usage_limits {
    data_storage {
      maximum = var.max_data_storage_gb
      unit    = "GB"
    }
    ecpu_per_second {
      maximum = var.max_ecpu_per_second
    }
  }
}

# elasticache:Connect on the cache and on the user: what an IAM token needs.
data "aws_iam_policy_document" "connect" {
  statement {
    actions = ["elasticache:Connect"]
    resources = [
      aws_elasticache_serverless_cache.this.arn,
      "arn:${data.aws_partition.current.partition}:elasticache:${data.aws_region.current.name}:${data.aws_caller_identity.current.account_id}:user:${aws_elasticache_user.cacheside.user_id}",
    ]
  }
}

# IRSA: the ServiceAccount's pods assume this role through the cluster's OIDC provider.
data "aws_iam_policy_document" "assume" {
  count = var.oidc_provider_arn == "" ? 0 : 1

  statement {
    actions = ["sts:AssumeRoleWithWebIdentity"]

    principals {
      type        = "Federated"
      identifiers = [var.oidc_provider_arn]
    }

    condition {
      test     = "StringEquals"
      variable = "${replace(var.oidc_provider_arn, "/^.*oidc-provider\\//", "")}:sub"
      values   = ["system:serviceaccount:${replace(var.service_account, "/", ":")}"]
    }
  }
}

resource "aws_iam_role" "connect" {
  count = var.oidc_provider_arn == "" ? 0 : 1

  name               = "${var.name}-elasticache-connect"
  assume_role_policy = data.aws_iam_policy_document.assume[0].json
  tags               = var.tags
}

resource "aws_iam_role_policy" "connect" {
  count = var.oidc_provider_arn == "" ? 0 : 1

  name   = "elasticache-connect"
  role   = aws_iam_role.connect[0].id
  policy = data.aws_iam_policy_document.connect.json
}
