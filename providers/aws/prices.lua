--- EC2 on-demand prices (Linux, shared tenancy, USD per hour) and EBS gp3
--- storage (USD per GB-month) by region, for the plan's worst-case cost.
--- A Lua table rather than JSON because only Lua under providers/ is compiled
--- into the binary. Prices drift: refresh from the source below and change
--- `date`. A type missing from a region prices as unknown, never as a guess.
return {
  date = "2026-12-01",
  source = "transcribed from the AWS Price List offer AmazonEC2 (https://pricing.us-east-1.amazonaws.com/offers/v1.0/aws/"
    .. "AmazonEC2/current/<region>/index.json; OnDemand, Linux, Shared tenancy, no pre-installed software; "
    .. "EBS gp3 storage from the same offer), not fetched by ephrun",
  hours_per_month = 730,
  regions = {
    ["us-east-1"] = {
      gp3_gb_month = 0.08,
      instances = {
        ["c5n.metal"] = 3.888, ["m5zn.metal"] = 3.9641, ["c7i.large"] = 0.08925, ["c7i.8xlarge"] = 1.428,
        ["t3.nano"] = 0.0052, ["t3.micro"] = 0.0104, ["t3.small"] = 0.0208, ["t3.medium"] = 0.0416,
        ["t3.large"] = 0.0832, ["t3.xlarge"] = 0.1664, ["t3.2xlarge"] = 0.3328,
      },
    },
    ["us-west-2"] = {
      gp3_gb_month = 0.08,
      instances = {
        ["c5n.metal"] = 3.888, ["m5zn.metal"] = 3.9641, ["c7i.large"] = 0.08925, ["c7i.8xlarge"] = 1.428,
        ["t3.nano"] = 0.0052, ["t3.micro"] = 0.0104, ["t3.small"] = 0.0208, ["t3.medium"] = 0.0416,
        ["t3.large"] = 0.0832, ["t3.xlarge"] = 0.1664, ["t3.2xlarge"] = 0.3328,
      },
    },
    ["eu-west-1"] = {
      gp3_gb_month = 0.088,
      instances = {
        ["c5n.metal"] = 4.32,
        ["t3.nano"] = 0.0057, ["t3.micro"] = 0.0114, ["t3.small"] = 0.0228, ["t3.medium"] = 0.0456,
        ["t3.large"] = 0.0912, ["t3.xlarge"] = 0.1824, ["t3.2xlarge"] = 0.3648,
      },
    },
    ["eu-central-1"] = {
      gp3_gb_month = 0.0952,
      instances = {
        ["t3.nano"] = 0.006, ["t3.micro"] = 0.012, ["t3.small"] = 0.024, ["t3.medium"] = 0.048,
        ["t3.large"] = 0.096, ["t3.xlarge"] = 0.192, ["t3.2xlarge"] = 0.384,
      },
    },
  },
}
