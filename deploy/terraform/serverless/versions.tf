terraform {
  required_version = ">= 1.5"

  required_providers {
    # 5.80 or later: aws_elasticache_serverless_cache, and "valkey" as the engine of users and
    # user groups.
    aws = {
      source  = "hashicorp/aws"
      version = ">= 5.80"
    }
  }
}
