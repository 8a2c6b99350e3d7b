local ephrun = require "ephrun"
local spec = require "ephrun.spec"
local it, eq, ok, raises, contains = spec.it, spec.eq, spec.ok, spec.raises, spec.contains
local xml = ephrun.xml

-- A DescribeInstances reply from moto 5.2.1 (two instances of one RunInstances call).
local DESCRIBE = [==[
<?xml version="1.0" encoding="utf-8"?>
<DescribeInstancesResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15">
<reservationSet>
<item>
<reservationId>r-6b1a6b733fabf3775</reservationId>
<ownerId>123456789012</ownerId>
<groupSet/>
<instancesSet>
<item>
<architecture>x86_64</architecture>
<blockDeviceMapping>
<item>
<deviceName>/dev/sda1</deviceName>
<ebs>
<attachTime>2026-11-25T17:00:50.000Z</attachTime>
<deleteOnTermination>true</deleteOnTermination>
<status>attached</status>
<volumeId>vol-d5523307c1f1ddcf8</volumeId></ebs></item></blockDeviceMapping>
<clientToken>ABCDE</clientToken>
<ebsOptimized>false</ebsOptimized>
<hypervisor>xen</hypervisor>
<networkInterfaceSet>
<item>
<association>
<ipOwnerId>123456789012</ipOwnerId>
<publicDnsName>ip-54-214-228-199.ec2.internal</publicDnsName>
<publicIp>54.214.228.199</publicIp></association>
<attachment>
<attachTime>2026-11-25T17:00:50.000Z</attachTime>
<attachmentId>eni-attach-b6af5b19c19f31e93</attachmentId>
<deleteOnTermination>false</deleteOnTermination>
<deviceIndex>0</deviceIndex>
<status>attached</status>
<networkCardIndex>0</networkCardIndex></attachment>
<description>Primary network interface</description>
<groupSet>
<item>
<groupId>sg-6545b0925799e749b</groupId>
<groupName>default</groupName></item></groupSet>
<ipv6AddressesSet/>
<macAddress>02:00:00:dc:0f:5d</macAddress>
<networkInterfaceId>eni-49f4c843873016d5f</networkInterfaceId>
<ownerId>123456789012</ownerId>
<privateDnsName>ip-10-84-128-233.ec2.internal</privateDnsName>
<privateIpAddress>10.84.128.233</privateIpAddress>
<privateIpAddressesSet>
<item>
<association>
<ipOwnerId>123456789012</ipOwnerId>
<publicDnsName>ip-54-214-228-199.ec2.internal</publicDnsName>
<publicIp>54.214.228.199</publicIp></association>
<primary>true</primary>
<privateIpAddress>10.84.128.233</privateIpAddress></item></privateIpAddressesSet>
<sourceDestCheck>true</sourceDestCheck>
<status>in-use</status>
<subnetId>subnet-22b3235038af561bc</subnetId>
<vpcId>vpc-4260989689be7e5c3</vpcId>
<interfaceType>interface</interfaceType></item></networkInterfaceSet>
<rootDeviceName>/dev/sda1</rootDeviceName>
<rootDeviceType>ebs</rootDeviceType>
<groupSet/>
<sourceDestCheck>true</sourceDestCheck>
<sriovNetSupport>simple</sriovNetSupport>
<stateReason>
<code/>
<message/></stateReason>
<tagSet>
<item>
<key>Project</key>
<value>ephrun</value></item></tagSet>
<virtualizationType>paravirtual</virtualizationType>
<hibernationOptions/>
<metadataOptions>
<state>applied</state>
<httpTokens>optional</httpTokens>
<httpPutResponseHopLimit>1</httpPutResponseHopLimit>
<httpEndpoint>enabled</httpEndpoint>
<httpProtocolIpv6>disabled</httpProtocolIpv6>
<instanceMetadataTags>disabled</instanceMetadataTags></metadataOptions>
<instanceId>i-5de637e0dcbc8db34</instanceId>
<imageId>ami-12345678</imageId>
<instanceState>
<code>16</code>
<name>running</name></instanceState>
<privateDnsName>ip-10-84-128-233.ec2.internal</privateDnsName>
<dnsName>ec2-54-214-228-199.compute-1.amazonaws.com</dnsName>
<reason/>
<amiLaunchIndex>0</amiLaunchIndex>
<productCodes/>
<instanceType>t3.micro</instanceType>
<launchTime>2026-11-25T17:00:50.000Z</launchTime>
<placement>
<groupName/>
<tenancy>default</tenancy>
<availabilityZone>us-east-1a</availabilityZone></placement>
<kernelId>None</kernelId>
<monitoring>
<state>disabled</state></monitoring>
<subnetId>subnet-22b3235038af561bc</subnetId>
<vpcId>vpc-4260989689be7e5c3</vpcId>
<privateIpAddress>10.84.128.233</privateIpAddress>
<ipAddress>54.214.228.199</ipAddress></item>
<item>
<architecture>x86_64</architecture>
<blockDeviceMapping>
<item>
<deviceName>/dev/sda1</deviceName>
<ebs>
<attachTime>2026-11-25T17:00:50.000Z</attachTime>
<deleteOnTermination>true</deleteOnTermination>
<status>attached</status>
<volumeId>vol-1a651bcac60a99f9d</volumeId></ebs></item></blockDeviceMapping>
<clientToken>ABCDE</clientToken>
<ebsOptimized>false</ebsOptimized>
<hypervisor>xen</hypervisor>
<networkInterfaceSet>
<item>
<association>
<ipOwnerId>123456789012</ipOwnerId>
<publicDnsName>ip-54-214-169-156.ec2.internal</publicDnsName>
<publicIp>54.214.169.156</publicIp></association>
<attachment>
<attachTime>2026-11-25T17:00:50.000Z</attachTime>
<attachmentId>eni-attach-5b078c0c087710caf</attachmentId>
<deleteOnTermination>false</deleteOnTermination>
<deviceIndex>0</deviceIndex>
<status>attached</status>
<networkCardIndex>0</networkCardIndex></attachment>
<description>Primary network interface</description>
<groupSet>
<item>
<groupId>sg-6545b0925799e749b</groupId>
<groupName>default</groupName></item></groupSet>
<ipv6AddressesSet/>
<macAddress>02:00:00:17:e8:58</macAddress>
<networkInterfaceId>eni-8b2c727e41ad35aac</networkInterfaceId>
<ownerId>123456789012</ownerId>
<privateDnsName>ip-10-23-30-252.ec2.internal</privateDnsName>
<privateIpAddress>10.23.30.252</privateIpAddress>
<privateIpAddressesSet>
<item>
<association>
<ipOwnerId>123456789012</ipOwnerId>
<publicDnsName>ip-54-214-169-156.ec2.internal</publicDnsName>
<publicIp>54.214.169.156</publicIp></association>
<primary>true</primary>
<privateIpAddress>10.23.30.252</privateIpAddress></item></privateIpAddressesSet>
<sourceDestCheck>true</sourceDestCheck>
<status>in-use</status>
<subnetId>subnet-22b3235038af561bc</subnetId>
<vpcId>vpc-4260989689be7e5c3</vpcId>
<interfaceType>interface</interfaceType></item></networkInterfaceSet>
<rootDeviceName>/dev/sda1</rootDeviceName>
<rootDeviceType>ebs</rootDeviceType>
<groupSet/>
<sourceDestCheck>true</sourceDestCheck>
<sriovNetSupport>simple</sriovNetSupport>
<stateReason>
<code/>
<message/></stateReason>
<tagSet>
<item>
<key>Project</key>
<value>ephrun</value></item></tagSet>
<virtualizationType>paravirtual</virtualizationType>
<hibernationOptions/>
<metadataOptions>
<state>applied</state>
<httpTokens>optional</httpTokens>
<httpPutResponseHopLimit>1</httpPutResponseHopLimit>
<httpEndpoint>enabled</httpEndpoint>
<httpProtocolIpv6>disabled</httpProtocolIpv6>
<instanceMetadataTags>disabled</instanceMetadataTags></metadataOptions>
<instanceId>i-9be944d354a1f1feb</instanceId>
<imageId>ami-12345678</imageId>
<instanceState>
<code>16</code>
<name>running</name></instanceState>
<privateDnsName>ip-10-23-30-252.ec2.internal</privateDnsName>
<dnsName>ec2-54-214-169-156.compute-1.amazonaws.com</dnsName>
<reason/>
<amiLaunchIndex>1</amiLaunchIndex>
<productCodes/>
<instanceType>t3.micro</instanceType>
<launchTime>2026-11-25T17:00:50.000Z</launchTime>
<placement>
<groupName/>
<tenancy>default</tenancy>
<availabilityZone>us-east-1a</availabilityZone></placement>
<kernelId>None</kernelId>
<monitoring>
<state>disabled</state></monitoring>
<subnetId>subnet-22b3235038af561bc</subnetId>
<vpcId>vpc-4260989689be7e5c3</vpcId>
<privateIpAddress>10.23.30.252</privateIpAddress>
<ipAddress>54.214.169.156</ipAddress></item></instancesSet></item></reservationSet>
<requestId>request-id</requestId></DescribeInstancesResponse>
]==]

it("decodes an EC2 DescribeInstances reply: item lists become arrays", function()
  local r, root = xml.decode(DESCRIBE)
  eq(root, "DescribeInstancesResponse")
  eq(r.requestId, "request-id")
  eq(#r.reservationSet, 1)
  local res = r.reservationSet[1]
  eq(res.ownerId, "123456789012")
  eq(res.groupSet, {}) -- <groupSet/>: an empty list
  eq(#res.instancesSet, 2)
  local i = res.instancesSet[1]
  ok(i.instanceId:match("^i%-%x+$"), i.instanceId)
  eq(i.instanceType, "t3.micro")
  eq(i.instanceState, { code = "16", name = "running" }) -- text stays text
  eq(i.tagSet, { { key = "Project", value = "ephrun" } })
  eq(i.stateReason, { code = "", message = "" })
  eq(i.hibernationOptions, "")
  ok(i.blockDeviceMapping[1].ebs.volumeId:match("^vol%-"))
  eq(i.networkInterfaceSet[1].groupSet[1].groupName, "default")
  eq(i.networkInterfaceSet[1].privateIpAddressesSet[1].primary, "true")
  eq(res.instancesSet[2].amiLaunchIndex, "1")
end)

it("decodes an empty reply and an error reply", function()
  local empty = xml.decode([[<?xml version="1.0" encoding="utf-8"?>
<DescribeInstancesResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15"><reservationSet/><requestId>request-id</requestId></DescribeInstancesResponse>]])
  eq(empty.reservationSet, {})
  local e, root = xml.decode([[<?xml version="1.0" encoding="utf-8"?>
<Response><Errors><Error><Code>InvalidInstanceID.NotFound</Code>
<Message>The instance ID 'i-bad' does not exist</Message></Error></Errors><RequestID>request-id</RequestID></Response>]])
  eq(root, "Response")
  eq(e.Errors.Error.Code, "InvalidInstanceID.NotFound")
  eq(e.RequestID, "request-id")
end)

it("strips namespace prefixes; repeated names become arrays; arrays= forces one", function()
  local v, root = xml.decode([[<s3:ListBucketResult xmlns:s3="urn:x"><s3:Name>b</s3:Name>
    <s3:Contents><s3:Key>a</s3:Key></s3:Contents>
    <s3:Contents><s3:Key>b</s3:Key></s3:Contents></s3:ListBucketResult>]])
  eq(root, "ListBucketResult")
  eq(v.Name, "b")
  eq(v.Contents, { { Key = "a" }, { Key = "b" } })
  local one = xml.decode("<R><Contents><Key>a</Key></Contents></R>")
  eq(one.Contents, { Key = "a" })
  local forced = xml.decode("<R><Contents><Key>a</Key></Contents></R>", { arrays = { "Contents" } })
  eq(forced.Contents, { { Key = "a" } })
end)

it("member lists (IAM, STS) and a lone item are arrays; attributes and mixed text are kept", function()
  eq(xml.decode("<R><Users><member><N>a</N></member></Users></R>").Users, { { N = "a" } })
  local mixed = xml.decode("<R><x><item>1</item><other>2</other></x></R>")
  eq(mixed.x, { item = { "1" }, other = "2" })
  local a = xml.decode([[<R id="7" xmlns="urn:y"><v unit="GiB">500</v>text</R>]])
  eq(a._attr, { id = "7" })
  eq(a.v, { _text = "500", _attr = { unit = "GiB" } })
  eq(a._text, "text")
  eq(xml.decode("<R><![CDATA[a<b]]> &amp; c</R>"), "a<b & c")
end)

it("parse errors return nil and a message with the offset", function()
  local v, err = xml.decode("<a>\n<b></a>")
  eq(v, nil)
  contains(err, "xml: ")
  contains(err, "offset")
  contains(err, "line 2")
  local v2, err2 = xml.decode("")
  eq(v2, nil); ok(err2)
end)

it("encode builds request bodies and round-trips through decode", function()
  local body = xml.encode({ Part = { { PartNumber = 1, ETag = '"abc"' }, { PartNumber = 2, ETag = '"def"' } } },
    "CompleteMultipartUpload")
  eq(body, '<?xml version="1.0" encoding="UTF-8"?><CompleteMultipartUpload>'
    .. '<Part><ETag>"abc"</ETag><PartNumber>1</PartNumber></Part>'
    .. '<Part><ETag>"def"</ETag><PartNumber>2</PartNumber></Part></CompleteMultipartUpload>')
  local back = xml.decode(body)
  eq(back.Part[2].ETag, '"def"')
  eq(xml.encode({ _attr = { xmlns = "urn:z" }, tagSet = { { key = "a", value = "<b>" } } }, "T"),
    '<?xml version="1.0" encoding="UTF-8"?><T xmlns="urn:z"><tagSet><item><key>a</key><value>&lt;b&gt;</value></item></tagSet></T>')
  eq(xml.encode({ n = 1, ok = true, e = {} }, "R"), '<?xml version="1.0" encoding="UTF-8"?><R><e/><n>1</n><ok>true</ok></R>')
  raises(function() xml.encode({ a = { { 1 } } }, "R") end, "array inside an array")
  raises(function() xml.encode({ f = print }, "R") end, "cannot encode a function")
end)

return spec.recipe("xml")
